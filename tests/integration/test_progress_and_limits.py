"""Issue 11 in the real ComfyUI: progress the person sees, bad widget values refused before running, the
MLLM's limits, and Cancel stopping the MLLM midway. After every refusal the same ComfyUI runs a good prompt."""

from __future__ import annotations

import math

import pytest
from dla_harness import Graph, add_dla_pipeline, add_staged_sampler, pack_module

pytestmark = pytest.mark.integration


def _pack_nodes() -> list[type]:
    return list(pack_module("nodes").NODES)


def _checks_its_widgets(node) -> bool:
    """Whether the node overrides ``validate_inputs`` (the pack's ones run ``nodes.input_checks``)."""
    return any("validate_inputs" in vars(klass) for klass in node.__mro__ if not klass.__module__.startswith("comfy"))


def _widgets(comfy, kind: str) -> list[tuple[str, str, object]]:
    """(node, input id, input spec) of every ``kind`` widget (Float, Int, Combo) of every pack node."""
    io = pytest.importorskip("comfy_api.latest").io
    found = []
    for node in _pack_nodes():
        if not _checks_its_widgets(node):
            continue  # ComfyUI's own min/max check applies (see the test below)
        for spec in node.define_schema().inputs:
            if type(spec) is getattr(io, kind).Input:
                found.append((node, spec.id, spec))
    return found


# ----------------------------------------------------------------------------- every widget of every node


def test_every_node_with_a_float_or_combo_widget_checks_its_widgets(comfy):
    """ComfyUI lets NaN through float widgets and 0.3.64 does not check V3 combo values: a node with either must
    check its widgets itself. Nodes with only int/string widgets may rely on ComfyUI's own min/max check."""
    io = pytest.importorskip("comfy_api.latest").io
    for node in _pack_nodes():
        kinds = {type(spec) for spec in node.define_schema().inputs}
        if kinds & {io.Float.Input, io.Combo.Input}:
            assert _checks_its_widgets(node), f"{node.__name__} has float/combo widgets but no validate_inputs"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_float_widget_refuses_non_finite_values(comfy, bad):
    floats = _widgets(comfy, "Float")
    assert len(floats) >= 10  # guidance, megapixels, cfg x4, denoise x2, tau1/tau2 x4
    for name, input_id, spec in floats:  # name: the node class
        message = name.validate_inputs(**{input_id: bad})
        assert isinstance(message, str), f"{name.__name__}.{input_id} accepted {bad}"
        assert f"'{input_id}' is {bad}, not a finite number; give a number between {spec.min:g} and {spec.max:g}" in (
            message
        )


def test_every_int_widget_refuses_values_outside_its_range(comfy):
    ints = _widgets(comfy, "Int")
    assert len(ints) >= 6
    for node, input_id, spec in ints:
        outside = [spec.max + 1] if spec.max is not None else []
        outside += [spec.min - 1] if spec.min is not None else []
        for bad in [*outside, 2.5]:
            message = node.validate_inputs(**{input_id: bad})
            assert isinstance(message, str) and f"'{input_id}'" in message and "whole number" in message, (
                f"{node.__name__}.{input_id} accepted {bad}: {message}"
            )


def test_every_combo_widget_refuses_a_value_it_does_not_offer(comfy):
    combos = _widgets(comfy, "Combo")
    assert len(combos) >= 10
    for name, input_id, _ in combos:
        message = name.validate_inputs(**{input_id: "no-such-option"})
        assert isinstance(message, str), f"{name.__name__}.{input_id} accepted a value it does not offer"
        assert f"'{input_id}' is 'no-such-option', which is not one of the offered values" in message
        assert "Pick one of them" in message


def test_good_widget_values_pass(comfy):
    for node in filter(_checks_its_widgets, _pack_nodes()):
        defaults = {spec.id: spec.default for spec in node.define_schema().inputs if getattr(spec, "default", None)}
        assert node.validate_inputs(**defaults) is True, node.__name__


@pytest.fixture
def then_next_prompt_runs(comfy):
    """Call after a refused prompt: a good prompt must succeed in the same ComfyUI."""

    def check():
        graph = Graph()
        nodes = add_dla_pipeline(graph, prompt_text="a good prompt")
        graph.add("PreviewAny", source=graph.out(nodes.positive))
        result = comfy.run(graph.prompt)
        assert result.success, result.error_text

    return check


def _node(graph, class_type):
    return next(node_id for node_id, node in graph.prompt.items() if node["class_type"] == class_type)


@pytest.mark.parametrize(
    "class_type, input_id, bad, expected",
    [
        ("DLAStagedKSampler", "cfg", math.nan, "'cfg' is nan, not a finite number"),
        ("DLAStagedKSampler", "tau1", math.nan, "'tau1' is nan, not a finite number"),
        ("DLAStagedKSampler", "denoise", math.inf, "'denoise' is inf, not a finite number"),
        ("DLAStagedKSampler", "sampler_name", "eulerx", "'sampler_name' is 'eulerx', which is not one of"),
        ("DLAStagedKSampler", "scheduler", "linear", "'scheduler' is 'linear', which is not one of"),
        ("DLAStagedKSampler", "steps", 0, "'steps' is 0; give a whole number between 1"),
        ("DLAAggregate", "guidance", math.nan, "'guidance' is nan, not a finite number"),
        ("DLAVAEIdentityEncode", "megapixels", math.nan, "'megapixels' is nan, not a finite number"),
        ("DLAMLLMLoader", "dtype", "fp8", "'dtype' is 'fp8', which is not one of the offered values: 'auto'"),
        ("DLAMLLMLoader", "device", "tpu", "'device' is 'tpu', which is not one of"),
        ("DLAMLLMJointEncode", "image_size", 5000, "'image_size' is 5000; give a whole number between 0 and 4096"),
    ],
)
def test_a_bad_widget_value_is_refused_before_running(
    comfy, then_next_prompt_runs, class_type, input_id, bad, expected
):
    graph = Graph()
    nodes = add_dla_pipeline(graph)
    sampler = add_staged_sampler(graph, nodes)
    graph.add("SaveLatent", samples=graph.out(sampler), filename_prefix="latents/dla_bad_widget")
    node_id = _node(graph, class_type)
    assert input_id in graph.prompt[node_id]["inputs"], f"{class_type} has no widget {input_id} in this graph"
    graph.prompt[node_id]["inputs"][input_id] = bad
    result = comfy.run(graph.prompt)
    assert not result.valid and node_id in result.node_errors, result.error_text
    assert expected in result.error_text
    then_next_prompt_runs()


def test_a_prompt_over_the_token_limit_fails_at_the_encode_with_the_variable(comfy, then_next_prompt_runs, monkeypatch):
    monkeypatch.setenv("DLA_MAX_PROMPT_TOKENS", "4")
    graph = Graph()
    nodes = add_dla_pipeline(graph, prompt_text="a dog on a beach under a tree at noon")
    graph.add("PreviewAny", source=graph.out(nodes.positive))
    result = comfy.run(graph.prompt)
    assert result.valid and not result.success
    assert result.execution_error["node_id"] == nodes.features
    message = result.execution_error["exception_message"]
    assert "more than the limit of 4 tokens" in message and "DLA_MAX_PROMPT_TOKENS=" in message
    monkeypatch.delenv("DLA_MAX_PROMPT_TOKENS")
    then_next_prompt_runs()


def test_too_many_references_fail_at_the_encode_with_the_variable(comfy, then_next_prompt_runs):
    graph = Graph()
    nodes = add_dla_pipeline(graph, prompt_text="seventeen views of the dog")
    batch = graph.add("RepeatImageBatch", image=graph.out(nodes.image), amount=17)
    graph.prompt[nodes.features]["inputs"]["image"] = graph.out(batch)
    graph.add("PreviewAny", source=graph.out(nodes.features))
    result = comfy.run(graph.prompt)
    assert result.valid and not result.success
    assert result.execution_error["node_id"] == nodes.features
    message = result.execution_error["exception_message"]
    assert "Reference images: 17, more than the limit of 16" in message and "DLA_MAX_REFERENCES=32" in message
    then_next_prompt_runs()


# ----------------------------------------------------------------------------- progress


@pytest.fixture
def progress_events(comfy, monkeypatch):
    """ComfyUI's progress-bar hook (what main.py installs) recording (node id, value, max); and PromptServer.instance
    set to the harness's server, whose send_progress_text is ComfyUI's own."""
    import comfy.utils as comfy_utils
    import server
    from comfy_execution.utils import get_executing_context

    events = []

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        context = get_executing_context()
        events.append((node_id or (context.node_id if context else None), value, total))

    monkeypatch.setattr(comfy_utils, "PROGRESS_BAR_HOOK", hook)
    monkeypatch.setattr(server.PromptServer, "instance", comfy.server, raising=False)
    comfy.server.messages.clear()
    return events


def test_the_staged_sampler_shows_each_stage_on_the_node_in_order(comfy, progress_events):
    graph = Graph()
    nodes = add_dla_pipeline(graph, prompt_text="stage texts")
    # 3 euler steps ("simple", FLUX shift): model calls at t = 1.0, 0.863, 0.612 -> stages 1, 2, 3
    sampler = add_staged_sampler(graph, nodes, steps=3, tau1=0.9, tau2=0.7)
    graph.add("SaveLatent", samples=graph.out(sampler), filename_prefix="latents/dla_stage_text")
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    texts = [text for node_id, text in comfy.server.progress_texts() if node_id == sampler]
    assert texts == ["stage 1/3: MLLM only", "stage 2/3: MLLM + identity", "stage 3/3: identity only"]


def test_the_guider_path_shows_the_stage_on_the_sampling_node(comfy, progress_events):
    graph = Graph()
    nodes = add_dla_pipeline(graph, prompt_text="stage texts via the guider")
    guider = graph.add(
        "DLAStagedGuider",
        model=graph.out(nodes.model),
        positive=graph.out(nodes.positive),
        cfg=1.0,
        tau1=0.95,
        tau2=0.85,
        identity=graph.out(nodes.identity),
    )
    sigmas = graph.add("BasicScheduler", model=graph.out(nodes.model), scheduler="simple", steps=2, denoise=1.0)
    noise = graph.add("RandomNoise", noise_seed=7)
    sampler_select = graph.add("KSamplerSelect", sampler_name="euler")
    advanced = graph.add(
        "SamplerCustomAdvanced",
        noise=graph.out(noise),
        guider=graph.out(guider),
        sampler=graph.out(sampler_select),
        sigmas=graph.out(sigmas),
        latent_image=graph.out(nodes.latent),
    )
    graph.add("SaveLatent", samples=graph.out(advanced), filename_prefix="latents/dla_stage_text_guider")
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    texts = [text for node_id, text in comfy.server.progress_texts() if node_id == advanced]
    assert texts == ["stage 1/3: MLLM only", "stage 3/3: identity only"]  # t = 1.0, then 0.76 < tau2


@pytest.mark.parametrize("layout", ["three reference inputs", "a batch of two"])
def test_the_mllm_encode_moves_the_progress_bar_to_the_end(comfy, progress_events, layout):
    graph = Graph()
    nodes = add_dla_pipeline(graph, prompt_text=f"progress with {layout}")
    if layout == "three reference inputs":
        references = 3
        extra = {"image_2": graph.out(nodes.image), "image_3": graph.out(nodes.image)}
    else:
        references = 2
        extra = {"image": graph.out(graph.add("RepeatImageBatch", image=graph.out(nodes.image), amount=2))}
    graph.prompt[nodes.features]["inputs"].update(extra)
    graph.add("PreviewAny", source=graph.out(nodes.features))
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    num_layers = comfy.output(nodes.mllm).loaded.spec.num_layers  # decoder layers + the final norm
    total = references + num_layers
    mine = [(value, maximum) for node_id, value, maximum in progress_events if node_id == nodes.features]
    assert mine, f"no progress from the encode node; events: {progress_events}"
    assert {maximum for _, maximum in mine} == {total}
    values = [value for value, _ in mine]
    assert values == sorted(values) and values[0] == 1 and values[-1] == total


# ----------------------------------------------------------------------------- interrupt


def test_cancel_while_the_mllm_runs_stops_it_at_the_next_layer(comfy, then_next_prompt_runs):
    """Cancel pressed while decoder layer 0 starts: the encode stops before that layer runs, with ComfyUI's
    interrupt (execution_interrupted, not an error), and the next prompt runs."""
    import importlib

    model_management = importlib.import_module("comfy.model_management")  # (the name "comfy" is the fixture here)
    graph = Graph()
    nodes = add_dla_pipeline(graph, prompt_text="warm the loader")
    graph.add("PreviewAny", source=graph.out(nodes.features))
    assert comfy.run(graph.prompt).success
    layers = comfy.output(nodes.mllm).loaded.model.model.language_model.layers  # the cached MLLM the next run uses
    ran = []
    handles = [layers[0].register_forward_pre_hook(lambda *args: model_management.interrupt_current_processing())]
    handles += [layer.register_forward_hook(lambda *args, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    try:
        graph.prompt[nodes.features]["inputs"]["prompt"] = "cancelled while encoding"
        result = comfy.run(graph.prompt)
    finally:
        for handle in handles:
            handle.remove()
    assert result.valid and not result.success
    assert result.execution_error is None  # Cancel is not an error
    assert result.interrupted_node == nodes.features
    assert ran == []
    assert not model_management.processing_interrupted()
    then_next_prompt_runs()


def test_cancel_while_the_dla_runs_stops_it_at_the_next_lap_block(comfy, then_next_prompt_runs):
    """Cancel pressed while the DLA's first LAP block runs: the aggregation stops before the next block, with
    ComfyUI's interrupt (execution_interrupted, not an error), and the next prompt runs."""
    import importlib

    model_management = importlib.import_module("comfy.model_management")
    graph = Graph()
    nodes = add_dla_pipeline(graph, prompt_text="warm the DLA loader")
    graph.add("PreviewAny", source=graph.out(nodes.positive))
    assert comfy.run(graph.prompt).success
    dla = comfy.output(nodes.dla).module  # the cached DLA the next run uses
    blocks = [*dla.lap_text.blocks, *dla.lap_image.blocks]
    assert len(blocks) >= 4
    ran = []

    def after_block(*_):
        ran.append(1)
        if len(ran) == 1:
            model_management.interrupt_current_processing(True)

    handles = [block.register_forward_hook(after_block) for block in blocks]
    try:
        graph.prompt[nodes.features]["inputs"]["prompt"] = "cancelled while aggregating"
        result = comfy.run(graph.prompt)
    finally:
        for handle in handles:
            handle.remove()
        model_management.interrupt_current_processing(False)
    assert result.valid and not result.success
    assert result.execution_error is None  # Cancel is not an error
    assert result.interrupted_node == nodes.positive
    assert len(ran) == 1  # the remaining LAP blocks never ran
    then_next_prompt_runs()


# ----------------------------------------------------------------------------- raw reference image size


@pytest.mark.parametrize(
    "class_type, input_id, named",
    [
        ("DLAMLLMJointEncode", "image_2", "reference image input 2"),
        ("DLAVAEIdentityEncode", "image_2", "reference image input 2"),
        ("DLAReferenceLatents", "image2", "reference image 2"),
    ],
)
def test_a_reference_over_the_pixel_limit_is_refused_by_every_image_node(
    comfy, then_next_prompt_runs, monkeypatch, class_type, input_id, named
):
    """The 64x64 test reference is exactly at the limit set here; its 80x64 copy in a second input is refused, by
    the node that has it, with the input, the size and both fixes; nothing downstream runs."""
    monkeypatch.setenv("DLA_MAX_REFERENCE_PIXELS", str(64 * 64))
    graph = Graph()
    nodes = add_dla_pipeline(graph, prompt_text=f"a bigger second reference for {class_type}")
    big = graph.add(
        "ImageScale", image=graph.out(nodes.image), upscale_method="area", width=80, height=64, crop="disabled"
    )
    if class_type == "DLAReferenceLatents":
        node_id = graph.add(
            class_type,
            conditioning=graph.out(nodes.positive),
            vae=graph.out(nodes.vae),
            vae_resolution=64,
            reference_latents_method="offset",
            image1=graph.out(nodes.image),
        )
    else:
        node_id = _node(graph, class_type)
    graph.prompt[node_id]["inputs"][input_id] = graph.out(big)
    graph.add("PreviewAny", source=graph.out(node_id))
    result = comfy.run(graph.prompt)
    assert result.valid and not result.success, result.error_text
    assert result.execution_error["node_id"] == node_id
    message = result.execution_error["exception_message"]
    assert message.startswith(
        f"{named} is 80x64 px (0.0 megapixels), more than the limit of 4096 pixels per reference image"
    ), message
    assert "'Upscale Image' (ImageScale)" in message and "DLA_MAX_REFERENCE_PIXELS=5120" in message
    monkeypatch.delenv("DLA_MAX_REFERENCE_PIXELS")
    then_next_prompt_runs()
