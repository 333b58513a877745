"""CUDA-graph replay of the transformer (``WorldModelConfig.cuda_graphs``): bit-identical to eager launches.

The graph tests need a GPU and are skipped without one; they ran on the lent H100 (see docs/GPU_RUNS.md). The
CPU tests check that the setting is validated and changes nothing on a CPU."""
import numpy as np
import pytest
import torch

from k4d_worldmodel.config import WorldModelConfig
from k4d_worldmodel.tiny import build_tiny_pipeline, tiny_inputs

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_setting_is_validated():
    assert WorldModelConfig().cuda_graphs is True
    with pytest.raises(ValueError, match="cuda_graphs"):
        WorldModelConfig(cuda_graphs="yes")


def test_no_effect_on_cpu(pmcond_pipe):
    inp = tiny_inputs(pmcond_pipe)
    pmcond_pipe.cuda_graphs = False
    a = pmcond_pipe(**inp, num_inference_steps=2, seed=1)
    pmcond_pipe.cuda_graphs = True
    try:
        b = pmcond_pipe(**inp, num_inference_steps=2, seed=1)
    finally:
        pmcond_pipe.cuda_graphs = False
    np.testing.assert_array_equal(a.rgb, b.rgb)
    assert "_graphs" not in pmcond_pipe.__dict__  # nothing was recorded


@cuda
@pytest.mark.parametrize("guidance,batch_cfg", [(1.0, True), (3.0, True), (3.0, False)])
def test_graph_replay_matches_eager(guidance, batch_cfg):
    pipe = build_tiny_pipeline("pmcond").to("cuda")
    pipe.set_progress_bar_config(disable=True)
    runs = {}
    for graphs in (False, True):
        pipe.cuda_graphs = graphs
        # several rollouts with other robot motions and images: the graph's condition buffers must follow
        runs[graphs] = [pipe(**tiny_inputs(pipe, seed=s, shift_px=2 * s), num_inference_steps=3, seed=s,
                             guidance_scale=guidance, batch_cfg=batch_cfg) for s in range(3)]
        torch.cuda.empty_cache()  # freed blocks get reused: a buffer the graph lost would now hold garbage
    for eager, graphed in zip(runs[False], runs[True]):
        torch.testing.assert_close(graphed.latents, eager.latents, rtol=0, atol=0)
    state = pipe.__dict__["_graphs"]
    assert not state["failed"] and len(state["graphs"]) == (1 if guidance <= 1 or batch_cfg else 2)


@cuda
def test_replaced_parameter_records_a_new_graph():
    pipe = build_tiny_pipeline("pmcond").to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pipe.cuda_graphs = True
    inp = tiny_inputs(pipe)
    pipe(**inp, num_inference_steps=2, seed=0)
    first = pipe.__dict__["_graphs"]["base"]
    tr = pipe.transformer
    tr.arm_pos_emb = torch.nn.Parameter(tr.arm_pos_emb.detach() * 0.0, requires_grad=False)
    out = pipe(**inp, num_inference_steps=2, seed=0)
    assert pipe.__dict__["_graphs"]["base"] != first
    pipe.cuda_graphs = False
    eager = pipe(**inp, num_inference_steps=2, seed=0)
    torch.testing.assert_close(out.latents, eager.latents, rtol=0, atol=0)


@cuda
def test_cpu_offload_stays_eager():
    """With accelerate's offload hooks the weights move between calls: no graph is recorded, results are eager's."""
    pipe = build_tiny_pipeline("pmcond")
    pipe.set_progress_bar_config(disable=True)
    inp = tiny_inputs(pipe)
    pipe.enable_model_cpu_offload()
    pipe.cuda_graphs = True
    graphed = pipe(**inp, num_inference_steps=2, seed=0)
    assert "_graphs" not in pipe.__dict__
    pipe.cuda_graphs = False
    eager = pipe(**inp, num_inference_steps=2, seed=0)
    np.testing.assert_array_equal(graphed.rgb, eager.rgb)


@cuda
def test_peft_adapter_toggle_records_a_new_graph():
    """Disabling an unfused peft adapter changes Python control flow, not storage: the graph must follow it."""
    from k4d_worldmodel.loading import attach_lora_adapter
    from k4d_worldmodel.tiny import random_lora_state_dict

    pipe = build_tiny_pipeline("pmcond")
    lora = random_lora_state_dict(pipe.transformer, rank=4, std=0.2)
    attach_lora_adapter(pipe.transformer, {k.removeprefix("transformer."): v for k, v in lora.items()}, 4, 4.0)
    pipe = pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    inp = tiny_inputs(pipe)
    out = {}
    for graphs in (False, True):
        pipe.cuda_graphs = graphs
        pipe.transformer.enable_adapters()
        with_lora = pipe(**inp, num_inference_steps=2, seed=0).latents
        pipe.transformer.disable_adapters()
        out[graphs] = (with_lora, pipe(**inp, num_inference_steps=2, seed=0).latents)
    assert not torch.equal(out[False][0], out[False][1])  # the adapter matters
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=0)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=0, atol=0)
