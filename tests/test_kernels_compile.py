"""The Triton kernels compile for a real GPU target (sm_90), no GPU needed.

The interpreter runs kernel bodies as numpy and accepts code the compiler rejects (types,
loop bounds, early returns), so the other kernel tests alone cannot catch those. Compiling
needs the kernels decorated without TRITON_INTERPRET, hence a fresh interpreter process.
"""

import os
import subprocess
import sys

import pytest


def compile_all(dtype: str) -> None:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from colm_kernels.chain_linear import triton as chain_linear
    from colm_kernels.chain_rmsnorm import triton as chain_rmsnorm

    def compile_kernel(fn, pointers, constexprs):
        # Pointers as given, the chain-boundary tables int64, every other runtime argument i32/fp32.
        tables = {"out_bounds", "in_bounds", "w_offsets", "bounds_ptr"}
        sig = {
            a: "constexpr"
            if a in constexprs
            else pointers.get(a) or ("*i64" if a in tables else "fp32" if a == "eps" else "i32")
            for a in fn.arg_names
        }
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))

    p = f"*{dtype}"
    acc, acc_p = (tl.float64, "*fp64") if dtype == "fp64" else (tl.float32, "*fp32")
    meta = dict(NUM_CHAINS=4, ACC_DTYPE=acc, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)
    compile_kernel(chain_linear._forward_kernel, dict(x_ptr=p, w_ptr=p, y_ptr=p), meta)
    compile_kernel(chain_linear._grad_input_kernel, dict(dy_ptr=p, w_ptr=p, dx_ptr=p), meta)
    compile_kernel(chain_linear._grad_weight_kernel, dict(dy_ptr=p, x_ptr=p, dw_ptr=p), meta)
    meta = dict(NUM_CHAINS=4, COMPUTE=acc, ROWS=4, BLOCK=128)
    compile_kernel(chain_rmsnorm._forward_kernel, dict(x_ptr=p, w_ptr=p, y_ptr=p, rstd_ptr=acc_p), meta)
    pointers = dict(dy_ptr=p, x_ptr=p, w_ptr=p, rstd_ptr=acc_p, dx_ptr=p, dw_partial_ptr=acc_p)
    compile_kernel(chain_rmsnorm._backward_kernel, pointers, meta)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_kernels_compile_for_sm90(dtype, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, __file__, dtype], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


if __name__ == "__main__":
    compile_all(sys.argv[1])
