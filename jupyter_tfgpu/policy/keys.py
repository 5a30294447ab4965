"""How a notebook is named: the key of its policy in the store, from the API's path or from a
kernel's session, relative to the server root with '/' separators."""

from __future__ import annotations

import os

from jupyter_tfgpu.policy.model import PolicyError, normalize_notebook_path


class NotebookKeys:
    """Notebook keys for one server root."""

    def __init__(self, root_dir: str) -> None:
        # jupyter_server keeps its root_dir as given (symlinks and all) and so does the path
        # it gives kernels; the resolved root is tried too, for a root that is itself a link.
        literal = os.path.normpath(os.path.abspath(root_dir))
        self.roots = tuple(dict.fromkeys([literal, os.path.realpath(root_dir)]))
        self.root_dir = literal

    def key(self, path: str) -> str:
        """A notebook path from the API, normalized (raises PolicyError)."""
        return normalize_notebook_path(path)

    def key_for_session(self, session_name: str | None) -> str | None:
        """The key for a kernel's JPY_SESSION_NAME, or None when it names no notebook under the
        root (the kernel then gets the admin default). Never raises: it runs inside a launch."""
        if not session_name:
            return None
        # jupyter_server sets it to the notebook's folder joined with the session's "name",
        # which a client chooses: "", "." or ".." name a folder or leave it, not a notebook.
        parts = session_name.replace(os.sep, "/").split("/")
        if parts[-1] in ("", ".", "..") or ".." in parts:
            return None
        try:
            relative = (
                self._under_root(session_name) if os.path.isabs(session_name) else session_name
            )
        except ValueError:  # Windows: on another drive than the root
            return None
        if relative is None:
            return None
        try:
            # The OS's separator becomes '/'; on POSIX a backslash stays part of the name.
            return normalize_notebook_path(relative, sep=os.sep)
        except PolicyError:
            return None

    def _under_root(self, path: str) -> str | None:
        """``path`` relative to the server root, symlinks kept: the path the user opened
        (``link/nb.ipynb``), as the session, the API and the enforcer name it."""
        path = os.path.normpath(path)
        for root in self.roots:
            relative = os.path.relpath(path, root)
            if relative != ".." and not relative.startswith(".." + os.sep):
                return relative
        return None

    def canonical(self, key: str | None) -> str | None:
        """A key from any caller (a session path, the API) in the store's one spelling."""
        if key is None:
            return None
        try:
            return normalize_notebook_path(key)
        except PolicyError:
            return None
