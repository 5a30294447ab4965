"""The services' parts that need no server: settings read once, the stream message made once."""

from __future__ import annotations

import json
from types import SimpleNamespace

from jupyter_tfgpu.policy import AdminPolicy
from jupyter_tfgpu.policy.changes import PolicyChanges
from jupyter_tfgpu.server.stream import StreamMessages
from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.kernels.enforcement import Rules
from jupyter_tfgpu.server.services import SAMPLING


def _settings(**values) -> dict:
    config = TFGPU(**values)
    return {name: getattr(config, name) for name in config.trait_names(config=True)}


def test_every_setting_the_services_read_is_a_trait():
    """The caps, the rules and the sampler's arguments name TFGPU traits, and nothing else."""
    # Given the default settings
    settings = _settings()
    # When the admin policy and the rules are made from them
    admin = AdminPolicy.from_settings(settings)
    rules = Rules.from_settings(settings)
    # Then each is what its defaults say, and every sampling setting is a trait
    assert admin == AdminPolicy.from_settings(admin.to_json())
    assert set(admin.to_json()) <= set(settings)
    assert rules.action == settings["enforcement"]
    assert rules.grace == settings["enforcement_grace"]
    assert set(SAMPLING) <= set(settings)


def test_admin_settings_go_in_and_come_out_under_their_names():
    """A setting given to from_settings is shown by to_json under the same name."""
    # Given settings with caps
    settings = _settings(max_memory_mb=2048, allowed_devices=[0, 1], forced_policy={"memory_growth": True})
    # When
    shown = AdminPolicy.from_settings(settings).to_json()
    # Then
    assert shown["max_memory_mb"] == 2048
    assert shown["allowed_devices"] == [0, 1]
    assert shown["forced_policy"] == {"memory_growth": True}


def test_a_snapshots_stream_message_is_made_once():
    """The kernel summary is asked once per snapshot (and policy revision), spliced after the GPUs."""
    # Given a presenter counting the summaries it asks for
    asked = []
    changes = PolicyChanges()
    stream = StreamMessages(lambda: asked.append(1) or [{"id": "k"}], changes)
    policies = json.dumps(changes.to_json())
    first = SimpleNamespace(text='{"timestamp":1,"gpus":[]}')
    # When one snapshot is sent twice, then another once
    once = stream.message(first)
    again = stream.message(first)
    stream.message(SimpleNamespace(text='{"timestamp":2,"gpus":[]}'))
    # Then the first message was made once, and nothing was written on the snapshot
    assert once == again == '{"timestamp":1,"gpus":[],"kernels":[{"id": "k"}],"policies":' + policies + "}"
    assert len(asked) == 2
    assert vars(first) == {"text": '{"timestamp":1,"gpus":[]}'}
    # And a policy change makes the same snapshot's message anew, with the change
    changes.record(["a.ipynb"])
    assert '"revision": 1' in stream.message(first)
    assert len(asked) == 3
