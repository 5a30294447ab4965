"""The PolicyEditor's GPU choice reads back what the notebook's policy holds: a policy that names
its GPUs by UUID (or names a MIG slice, which has no box) is never turned into "CPU only"."""

from __future__ import annotations

from jupyter_tfgpu.in_kernel.policy_editor import _FieldControl
from jupyter_tfgpu.in_kernel.policy_fields import field_named

GPUS = [{"index": 0, "uuid": "GPU-aaa"}, {"index": 1, "uuid": "GPU-bbb"}]
MIG = "MIG-5e8e1f4c-0d2b-5d6b-9a1e-3c2f1b0a9d8e"


def devices() -> _FieldControl:
    """The devices control, over two GPUs."""
    return _FieldControl(field_named("devices"), GPUS)


def test_gpus_named_by_uuid_are_ticked_and_read_back_as_they_were():
    """Saving the form with another field changed keeps the GPUs, in the policy's own words."""
    control = devices()
    control.set(["GPU-bbb"])
    assert [box.value for box in control.gpus] == [False, True]
    assert control.get() == ["GPU-bbb"]


def test_a_changed_choice_keeps_naming_gpus_as_the_policy_did():
    """Ticking another GPU in a policy of UUIDs adds its UUID; one of indices, its index."""
    by_uuid, by_index = devices(), devices()
    by_uuid.set(["GPU-bbb"])
    by_index.set([1])
    for control in (by_uuid, by_index):
        control.gpus[0].value = True
    assert by_uuid.get() == ["GPU-aaa", "GPU-bbb"]
    assert by_index.get() == [0, 1]


def test_a_device_without_a_box_is_kept_while_the_boxes_are_untouched():
    """A MIG slice the form cannot show a box for stays in the policy, unless the user changes
    the GPUs (then named by UUID, as the policy named its device)."""
    control = devices()
    control.set([MIG])
    assert control.input.value == "these GPUs" and control.get() == [MIG]
    control.gpus[0].value = True
    assert control.get() == ["GPU-aaa"]


def test_indices_and_cpu_only_and_auto_as_before():
    """What worked keeps working."""
    control = devices()
    control.set([0])
    assert control.get() == [0]
    control.set([])
    assert control.get() == []
    control.set("auto")
    assert control.get() == "auto"
    control.set(None)
    assert control.get() is None
