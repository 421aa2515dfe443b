"""The GPU path (FlashInfer + CUDA events).  Marked ``gpu``: deselected by default, skipped without CUDA.

Run on a GPU machine with ``pytest -m gpu test/kernels``.
"""

import pytest

from sglang_fair.policy.cost_model import load_cost_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("flashinfer")
    return torch


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize(
    "contexts, chunk, prefix",
    [((37, 300, 5), 0, 0), ((), 70, 0), ((), 64, 129), ((17, 250), 33, 0), ((17, 250, 1), 48, 200)],
)
def test_flashinfer_attention_matches_sdpa(torch, kernels_pkg, contexts, chunk, prefix, page_size):
    """Decode wrapper, and ragged + paged + merge_state extend, against a dense reference."""
    backends, grid, shapes = kernels_pkg("backends"), kernels_pkg("grid"), kernels_pkg("model_shape")
    shape = shapes.NAMED_SHAPES["llama3-8b"].with_options(num_layers=1)  # GQA group 4, head_dim 128
    backend = backends.CudaBackend(shape, 4096, page_size=page_size)
    case = grid.BatchCase(tuple(contexts), chunk, prefix)
    _, batch = backend._prepare(case)
    layout = backends.paged_layout(case, page_size)
    gen = torch.Generator(device="cuda").manual_seed(0)
    backend.k_cache.normal_(generator=gen)
    backend.v_cache.normal_(generator=gen)
    tokens = layout.qo_indptr[-1]
    q = torch.randn(tokens, shape.heads_per_rank, shape.head_dim, device="cuda", dtype=backend.dtype, generator=gen)
    k = torch.randn(tokens, shape.kv_heads_per_rank, shape.head_dim, device="cuda", dtype=backend.dtype, generator=gen)
    v = torch.randn_like(k)
    out = backend.attend(batch, q, k, v).float()
    k_flat = backend.k_cache.view(-1, shape.kv_heads_per_rank, shape.head_dim).float()
    v_flat = backend.v_cache.view(-1, shape.kv_heads_per_rank, shape.head_dim).float()
    group = shape.heads_per_rank // shape.kv_heads_per_rank
    for index in range(len(layout.qo_indptr) - 1):
        rows = slice(layout.qo_indptr[index], layout.qo_indptr[index + 1])
        new = rows.stop - rows.start
        pages = layout.page_indices[layout.page_indptr[index] : layout.page_indptr[index + 1]]
        total = (len(pages) - 1) * page_size + layout.last_page_len[index]
        slots = torch.tensor([p * page_size + o for p in pages for o in range(page_size)][:total], device="cuda")
        keys = k_flat[slots].repeat_interleave(group, dim=1).transpose(0, 1)
        values = v_flat[slots].repeat_interleave(group, dim=1).transpose(0, 1)
        mask = torch.ones(new, total, dtype=torch.bool, device="cuda").tril(diagonal=total - new)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[rows].float().transpose(0, 1), keys, values, attn_mask=mask).transpose(0, 1)
        torch.testing.assert_close(out[rows], expected, atol=3e-2, rtol=3e-2)


def test_gpu_profile_tiny_grid_end_to_end(torch, kernels_pkg, tmp_path):
    profile = kernels_pkg("profile")
    code = profile.main(["--device", "cuda", "--model", "llama2-7b", "--grid", "tiny", "--holdout", "12",
                         "--repeats", "5", "--name", "gpu-ci", "--out-dir", str(tmp_path), "--quiet"])
    assert code == 0
    model = load_cost_model(str(tmp_path / "gpu-ci.json"))
    fit_error, holdout_error = model.info["fit_error"]["all"], model.info["holdout_error"]["all"]
    assert holdout_error["mape"] <= max(fit_error["p90_ape"], 1.5 * fit_error["mape"]) + 0.03, model.info
