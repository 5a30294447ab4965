"""The README's settings table is the one generated from the traits' help."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    """Import scripts/config_table.py."""
    spec = importlib.util.spec_from_file_location("config_table", ROOT / "scripts" / "config_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_config_table_is_current():
    """Run `python scripts/config_table.py --write` when a trait or its help changes."""
    # Given the table generated from the TFGPU traits
    expected = load_script().readme_block()
    # Then the README holds exactly that table
    assert expected in (ROOT / "README.md").read_text()


def test_every_trait_has_help():
    """Every operator setting documents itself (the help is the admin manual)."""
    from jupyter_tfgpu.server.config import TFGPU

    for name, trait in TFGPU.class_traits(config=True).items():
        assert len((trait.help or "").split()) >= 8, name
