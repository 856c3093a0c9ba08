"""One table of tolerances for the whole suite (docs/ARCHITECTURE.md, Tolerances)."""
import torch

TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
