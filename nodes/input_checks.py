"""Widget values checked against the node's own schema, before the prompt runs (the nodes' ``validate_inputs``).

Why here and not left to ComfyUI: ComfyUI's built-in checks let NaN through every float widget (``nan < min``
and ``nan > max`` are both false); ComfyUI 0.3.64 does not check V3 combo values at all; and once a node
defines ``validate_inputs`` taking ``**kwargs`` (the staged samplers must, for tau1/tau2 and the timing), ComfyUI
skips its own min/max and combo checks for that node. So every node of the pack declares
``validate_inputs = checked_inputs()`` and gets: floats finite and within min..max, ints whole and within
min..max, combo values among the offered options; a node with rules across inputs (the staged samplers'
taus and timing) passes them as extra checks, ``checked_inputs(stage_input_problem)``. The messages come
from :mod:`dla_core.checks`.
Linked inputs (``None`` while validating) are checked by the node when it runs.
"""

from __future__ import annotations

from typing import Callable

from comfy_api.latest import io

from ..dla_core.checks import choice, finite, whole
from ..dla_core.errors import DLAInputError


def widget_problem(node_cls, values: dict) -> str | None:
    """The first problem with ``values`` (input id -> widget value) against ``node_cls``'s schema, or None."""
    try:
        check_widgets(node_cls, values)
    except DLAInputError as error:
        return str(error)
    return None


def check_widgets(node_cls, values: dict) -> None:
    """Raise :class:`DLAInputError` for the first widget value outside what ``node_cls``'s schema offers."""
    for spec in node_cls.define_schema().inputs:
        value = values.get(spec.id)
        if value is None:
            continue
        if isinstance(spec, io.Combo.Input):
            choice(spec.id, value, [getattr(option, "value", option) for option in spec.options or []])
        elif isinstance(spec, io.Float.Input):
            finite(spec.id, value, spec.min, spec.max)
        elif isinstance(spec, io.Int.Input):
            whole(spec.id, value, spec.min, spec.max)


def checked_inputs(*extra_checks: Callable[[dict], str | None]) -> classmethod:
    """A node's ``validate_inputs`` (``validate_inputs = checked_inputs()``): True, or the message ComfyUI shows.

    First the widget values against the node's schema (:func:`widget_problem`), then each of
    ``extra_checks`` (input id -> value, linked inputs absent -> a message or None), in order.
    """

    def validate_inputs(cls, **values):
        problem = widget_problem(cls, values)
        for check in extra_checks:
            problem = problem or check(values)
        return problem or True

    return classmethod(validate_inputs)
