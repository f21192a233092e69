"""Roofline of the hot stencils: bytes per voxel, achieved GB/s against the measured
copy bandwidth, voxel updates/s, and the XLA fusions of one step (issue #14 item 1).

Run:  python benchmarks/roofline.py                 # CPU: 64³, 128³, 256³
      python benchmarks/roofline.py --gpu           # GPU: 64³ … 512³ (fails without a GPU)
      python benchmarks/roofline.py --sizes 64 --steps 8

In one process it measures

* the device's copy bandwidth: a large ``x + 1`` and a large copy (read + write, 2 × 4 B
  per element); the larger of the two is "copy bandwidth" below;
* the anisotropic diffusion explicit step, reference (``kernels/diffusion.explicit_step``,
  grain id and tensor table gathered every step) and fused
  (``kernels/diffusion_fused``: pair weights precomputed once, padded state), each as a
  ``lax.scan`` of ``--steps`` steps in one jit, plus single jitted steps called from
  Python (reference; fused with and without a donated state);
* the conduction matvec of ``kernels/conduction.solve_potential`` (face conductances,
  Dirichlet conductance, identity on dead voxels), ``--steps`` matvecs in one scan;
* one elasticity CG iteration of ``kernels/elasticity.solve_elasticity`` (rotated
  hexagonal grains, pores): the body of its CG loop built from the kernel's own
  operator pieces, ``--steps``/2 iterations in one loop; the HLO op counts of the real
  solver's CG loop body are reported beside it.

Bytes that must move per voxel (float32, 3D; the compulsory traffic of a perfectly
fused implementation with the data layout the kernel uses; small per-grain tables
stay in cache and are not counted):

* diffusion, reference layout: read x, grain id (int32), source; write x: 16 B.
* diffusion, fused layout: read x, 9 pair weights, the active mask (1 B), the source;
  write x: 4 + 36 + 1 + 4 + 4 = 49 B.
* conduction matvec: read x, 3 face conductances, the Dirichlet conductance and the
  identity mask (float32); write y: 7 × 4 = 28 B.
* elasticity CG iteration: the global dot products split an iteration into at least
  four passes: (1) A p: read p (3 comps), phase index (int32), Li fraction x; write
  A p (3): 8 words; (2) u += α p, r −= α A p: read 12, write 6: 18 words; (3) the
  preconditioner, counted as one read and one write of r, z (FFTs make more passes):
  6 words; (4) p = z + β p: read 6, write 3: 9 words. Total 41 words = 164 B.

Achieved GB/s = bytes per voxel × voxel updates/s (all n³ voxels count). Results go
to benchmarks/results/roofline_<device>.json with the device name, the load average
of the machine during the run (the CPU is shared) and the HLO op counts of one step.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_particle, device_info, time_call, write_result  # noqa: E402

from ssbx.kernels import conduction as kc  # noqa: E402
from ssbx.kernels import diffusion as kd  # noqa: E402
from ssbx.kernels import diffusion_fused as kf  # noqa: E402
from ssbx.kernels import diffusion_pallas as kp  # noqa: E402
from ssbx.kernels import elasticity as ke  # noqa: E402
from ssbx.kernels import stiffness as ks  # noqa: E402
from ssbx.kernels.rotations import quaternion_to_matrix  # noqa: E402

H = 1e-7  # voxel size, m
PRINCIPAL = (5e-15, 5e-15, 1e-20)  # NCM622 in-plane / c-axis diffusivities, m²/s (as benchmarks/diffusion.py)
DIFFUSION_REF_BYTES = 16
DIFFUSION_FUSED_BYTES = 4 + 4 * 9 + 1 + 4 + 4
MATVEC_BYTES = 4 * (1 + 3 + 1 + 1 + 1)
CG_ITERATION_BYTES = 4 * 41


# ----------------------------------------------------------------------------------
# HLO op counts
# ----------------------------------------------------------------------------------

_OPCODE = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s+=\s+.*?\s([a-z][a-z0-9\-]*)\(")


def _computations(hlo_text):
    """{name: [instruction lines]} of an HLO module text; the entry is called 'ENTRY'."""
    comps, name, lines = {}, None, []
    for line in hlo_text.splitlines():
        head = re.match(r"^(ENTRY\s+)?%(\S+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            name, lines = ("ENTRY" if head.group(1) else head.group(2)), []
        elif line.startswith("}") and name is not None:
            comps[name] = lines
            name = None
        elif name is not None:
            lines.append(line)
    return comps


def _op_counts(lines):
    counts = Counter()
    for line in lines:
        m = _OPCODE.match(line)
        if m and m.group(1) not in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
            counts[m.group(1)] += 1
    return dict(counts)


def hlo_ops(compiled_text, loop_body=False):
    """Op counts (parameters, constants, tuples and bitcasts left out) of the entry
    computation, or of the largest while-loop body when ``loop_body``."""
    comps = _computations(compiled_text)
    if not loop_body:
        return _op_counts(comps["ENTRY"])
    bodies = set(re.findall(r"body=%([\w.\-]+)", compiled_text))
    best = max(bodies, key=lambda b: len(comps.get(b, [])))
    return _op_counts(comps[best])


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
                "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[fsuc]\d+|bf16)\[([\d,]*)\]")
_NAMED = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s+=\s+(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")


def _type_bytes(type_text):
    total = 0
    for dtype, dims in _SHAPE.findall(type_text):
        total += _DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return total


def hlo_traffic_bytes(compiled_text, loop_body=False):
    """Bytes the scheduled HLO moves: Σ over the memory-touching instructions (fusions,
    copies, FFTs, dots, ...) of output bytes plus operand bytes, in the entry (or the
    largest while-loop body). An estimate of XLA's real traffic (each kernel's inputs
    and outputs once; caches ignored), to compare with the compulsory bytes."""
    comps = _computations(compiled_text)
    if loop_body:
        bodies = set(re.findall(r"body=%([\w.\-]+)", compiled_text))
        lines = comps[max(bodies, key=lambda b: len(comps.get(b, [])))]
    else:
        lines = comps["ENTRY"]
    size, total = {}, 0
    for line in lines:
        m = _NAMED.match(line)
        if not m:
            continue
        name, type_text, opcode, rest = m.groups()
        size[name] = _type_bytes(type_text)
        if opcode in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call"):
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("),")[0])
        total += size[name] + sum(size.get(o, 0) for o in operands)
    return total


def _compiled_text(fn, *args):
    return fn.lower(*args).compile().as_text()


# ----------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------


def copy_bandwidth(n_bytes):
    n = n_bytes // 4
    x = jnp.arange(n, dtype=jnp.float32)
    out = {}
    for name, fn in (("x_plus_1", jax.jit(lambda v: v + 1.0)), ("copy", jax.jit(jnp.copy))):
        seconds = time_call(fn, x, repeats=5)
        out[name + "_GBs"] = 2 * n * 4 / seconds / 1e9
    out["bytes"] = n * 4
    out["copy_bandwidth_GBs"] = max(out["x_plus_1_GBs"], out["copy_GBs"])
    return out


def _row(seconds_per_update, n, bytes_per_voxel, copy_bw, extra=None):
    updates = n**3 / seconds_per_update
    row = {
        "seconds_per_step": seconds_per_update,
        "voxel_updates_per_s": updates,
        "bytes_per_voxel": bytes_per_voxel,
        "achieved_GBs": updates * bytes_per_voxel / 1e9,
        "fraction_of_copy_bandwidth": updates * bytes_per_voxel / 1e9 / copy_bw,
    }
    row.update(extra or {})
    return row


def bench_diffusion(n, steps, copy_bw, repeats, pallas=False):
    micro, geometry, params = benchmark_particle(n, max(1, 100 * (n // 64) ** 3), H)
    table = kd.tensor_components(kd.grain_diffusion_tensors(
        quaternion_to_matrix(params.orientations), jnp.asarray(PRINCIPAL, jnp.float32), 3))
    gid = geometry.grain_id
    source = kd.surface_flux_rate(params.flux_mol_m2_s, geometry.face_count, params.c_max_mol_m3, H)
    source = jnp.asarray(source, jnp.float32)
    dt = jnp.float32(kd.stable_time_step(max(PRINCIPAL), H, 3))
    x0 = jnp.where(gid >= 0, jnp.float32(0.9), jnp.float32(0.0))

    @jax.jit
    def reference(x, gid, table, source, dt):
        body = lambda v, _: (kd.explicit_step(v, dt, gid, table, H, source), None)  # noqa: E731
        return jax.lax.scan(body, x, None, length=steps)[0]

    t0 = time.perf_counter()
    coeffs = jax.block_until_ready(kf.prepare(gid, table, H))
    prepare_first_call_s = time.perf_counter() - t0
    prepare_s = time_call(kf.prepare, gid, table, H, repeats=1)

    t_ref = time_call(reference, x0, gid, table, source, dt, repeats=repeats) / steps
    t_fused = time_call(lambda x: kf.rollout(x, coeffs, dt, steps, source), x0, repeats=repeats) / steps
    diff = float(jnp.max(jnp.abs(reference(x0, gid, table, source, dt) - kf.rollout(x0, coeffs, dt, steps, source))))
    pallas_rows = {}
    if pallas:  # compiled on a GPU; the Pallas interpreter elsewhere (slow: small sizes only)
        t_pallas = time_call(lambda x: kp.rollout(x, coeffs, dt, steps, source), x0, repeats=repeats) / steps
        pallas_rows = {
            "pallas_rollout": _row(t_pallas, n, DIFFUSION_FUSED_BYTES, copy_bw),
            "pallas_block": list(kp.DEFAULT_BLOCK),
            "pallas_interpreted": not kp.on_gpu(),
            "max_abs_difference_pallas_vs_fused": float(jnp.max(jnp.abs(
                kp.rollout(x0, coeffs, dt, steps, source) - kf.rollout(x0, coeffs, dt, steps, source)))),
            "speedup_pallas_rollout_vs_reference": t_ref / t_pallas,
        }

    plain = jax.jit(kf.step_padded)

    def python_loop(step_fn):
        def run(xp):
            for _ in range(steps):
                xp = step_fn(xp, coeffs, dt, source)
            return xp
        return run

    t_loop = {}
    for name, fn in (("fused_step_python_loop", plain), ("fused_step_python_loop_donated", kf.step_jit)):
        run = python_loop(fn)
        jax.block_until_ready(run(kf.pad_state(x0)))
        best = float("inf")
        for _ in range(repeats):
            xp = jax.block_until_ready(kf.pad_state(x0))
            t0 = time.perf_counter()
            jax.block_until_ready(run(xp))
            best = min(best, time.perf_counter() - t0)
        t_loop[name] = best / steps

    ref_step = jax.jit(lambda x, g, t, s, d: kd.explicit_step(x, d, g, t, H, s))

    def ref_loop(x):
        for _ in range(steps):
            x = ref_step(x, gid, table, source, dt)
        return x

    t_loop["reference_step_python_loop"] = time_call(ref_loop, x0, repeats=repeats) / steps
    xp0 = kf.pad_state(x0)
    hlo = {
        "reference_step": hlo_ops(_compiled_text(ref_step, x0, gid, table, source, dt)),
        "fused_step_padded": hlo_ops(_compiled_text(plain, xp0, coeffs, dt, source)),
        "fused_step_padded_donated": hlo_ops(_compiled_text(kf.step_jit, xp0, coeffs, dt, source)),
        "fused_rollout_loop_body": hlo_ops(
            # coefficients as arguments: captured as constants they are 5.6 GB at 512³ and
            # stalled the compilation (H200 run, 2026-12-04)
            _compiled_text(jax.jit(lambda x, c, s: kf.rollout(x, c, dt, steps, s)), x0, coeffs, source),
            loop_body=True),
        "reference_rollout_loop_body": hlo_ops(
            _compiled_text(reference, x0, gid, table, source, dt), loop_body=True),
    }
    texts = {
        "reference_step": _compiled_text(ref_step, x0, gid, table, source, dt),
        "fused_step_padded": _compiled_text(plain, xp0, coeffs, dt, source),
        "fused_step_padded_donated": _compiled_text(kf.step_jit, xp0, coeffs, dt, source),
    }
    traffic = {k: hlo_traffic_bytes(v) / n**3 for k, v in texts.items()}
    return {
        "n": n,
        "hlo_traffic_bytes_per_voxel": traffic,
        "active_fraction": float(micro.active.mean()),
        "n_grains": micro.n_grains,
        "steps": steps,
        "reference": _row(t_ref, n, DIFFUSION_REF_BYTES, copy_bw),
        "fused_rollout": _row(t_fused, n, DIFFUSION_FUSED_BYTES, copy_bw),
        **pallas_rows,
        **{k: _row(v, n, DIFFUSION_REF_BYTES if k.startswith("reference") else DIFFUSION_FUSED_BYTES, copy_bw)
           for k, v in t_loop.items()},
        "speedup_fused_rollout_vs_reference": t_ref / t_fused,
        "speedup_fused_step_vs_reference_step_python_loops":
            t_loop["reference_step_python_loop"] / t_loop["fused_step_python_loop"],
        "prepare_seconds": prepare_s,
        "prepare_first_call_seconds_incl_compile": prepare_first_call_s,
        "max_abs_difference_after_steps": diff,
        "hlo_op_counts": hlo,
    }


def bench_conduction(n, steps, copy_bw, repeats):
    rng = np.random.default_rng(0)
    sigma = jnp.asarray(np.where(rng.random((n, n, n)) < 0.5, 1.0, 1e-3), jnp.float32)
    g = kc.face_conductances(sigma, axis=2, lateral="periodic")
    layer = jnp.zeros((n,), jnp.float32).at[0].set(1.0).at[n - 1].set(1.0)
    gb = 2.0 * sigma * layer[None, None, :]
    identity = jnp.zeros((n, n, n), jnp.float32)  # every voxel conducts here; kept as in the solver

    def matvec(x, g, gb, identity):
        return kc.apply_operator(x, g, gb) + identity * x

    @jax.jit
    def chain(x, g, gb, identity):
        body = lambda v, _: (1e-1 * matvec(v, g, gb, identity), None)  # noqa: E731
        return jax.lax.scan(body, x, None, length=steps)[0]

    x = jnp.asarray(rng.random((n, n, n)), jnp.float32)
    seconds = time_call(chain, x, g, gb, identity, repeats=repeats) / steps
    single = jax.jit(matvec)
    return {
        "n": n,
        "hlo_traffic_bytes_per_voxel": {"matvec": hlo_traffic_bytes(_compiled_text(single, x, g, gb, identity)) / n**3},
        "steps": steps,
        "matvec": _row(seconds, n, MATVEC_BYTES, copy_bw),
        "hlo_op_counts": {"matvec": hlo_ops(_compiled_text(single, x, g, gb, identity)),
                          "scan_loop_body": hlo_ops(_compiled_text(chain, x, g, gb, identity), loop_body=True)},
    }


def bench_elasticity(n, steps, copy_bw, repeats):
    """``steps`` CG iterations of the elasticity solver's own operator pieces in one scan.

    The body is the one of kernels/elasticity._pcg with the matvec and preconditioner
    that _solve builds (rotated scheme strain, per-voxel gathered stiffness C0 + x ΔC,
    divergence, FFT reference preconditioner); the 6-component mean-strain block of the
    mixed control is left out (it is a (6,) vector, no grid traffic).
    """
    rng = np.random.default_rng(1)
    n_grains = 16
    grains = rng.integers(0, n_grains, size=(n, n, n))
    phase = np.where(rng.random((n, n, n)) < 0.1, 0, grains + 1)  # phase 0: pore
    q = rng.standard_normal((n_grains, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    # illustrative hexagonal stiffness (GPa, the solver's internal unit); only the timing matters
    c_hex = ks.hexagonal_stiffness(250.0, 100.0, 80.0, 180.0, 60.0)
    t0 = jnp.concatenate([jnp.zeros((1, 6, 6)), ks.grain_stiffness_table(jnp.asarray(q), c_hex)])
    c0m = (ks.voigt_to_mandel_stiffness(t0) + 1e-6 * 100.0 * jnp.eye(6)).astype(jnp.float32)
    cdm = (-0.1 * c0m).astype(jnp.float32)
    cols0 = [[c0m[:, i, j] for j in range(6)] for i in range(6)]
    colsd = [[cdm[:, i, j] for j in range(6)] for i in range(6)]
    x = jnp.asarray(rng.random((n, n, n)), jnp.float32)
    idx = jnp.asarray(phase, jnp.int32)
    precond = ke._reference_preconditioner((n, n, n), 100.0, 60.0, jnp.float32)

    def matvec(u, idx, x):
        return ke._divergence_t(ke._apply_stiffness(ke._strain_mandel(u, 3), cols0, colsd, idx, x), 3)

    def iteration(state, idx, x):  # the body of kernels/elasticity._pcg
        u, r, p, rz = state
        ap = matvec(p, idx, x)
        alpha = rz / jnp.sum(p * ap)
        u = u + alpha * p
        r = r - alpha * ap
        z = precond(r)
        rz_new = jnp.sum(r * z)
        return u, r, z + (rz_new / rz) * p, rz_new

    @jax.jit
    def chain(r0, idx, x):
        z0 = precond(r0)
        state = (jnp.zeros_like(r0), r0, z0, jnp.sum(r0 * z0))
        return jax.lax.fori_loop(0, steps, lambda i, s: iteration(s, idx, x), state)[0]

    r0 = jnp.asarray(rng.standard_normal((3, n, n, n)), jnp.float32)
    compiled = chain.lower(r0, idx, x).compile()  # (the wave-vector tables are constant-folded: slow at 256³)
    jax.block_until_ready(compiled(r0, idx, x))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(r0, idx, x))
        best = min(best, time.perf_counter() - start)
    one = jax.jit(lambda s, idx, x: iteration(s, idx, x))
    z0 = precond(r0)
    state = (jnp.zeros_like(r0), r0, z0, jnp.sum(r0 * z0))
    text = _compiled_text(one, state, idx, x)
    return {
        "n": n,
        "steps": steps,
        "cg_iteration": _row(best / steps, n, CG_ITERATION_BYTES, copy_bw),
        "hlo_op_counts": {"cg_iteration": hlo_ops(text)},
        "hlo_traffic_bytes_per_voxel": {"cg_iteration": hlo_traffic_bytes(text) / n**3},
    }


def elasticity_loop_ops(n=16):
    """HLO op counts of the CG while-loop body of solve_elasticity (grid-size independent)."""
    rng = np.random.default_rng(1)
    c = ks.lame_stiffness(60.0e9, 40.0e9)[None].astype(jnp.float32)
    t = jnp.concatenate([c, 0.5 * c])
    idx = jnp.asarray(rng.integers(0, 2, size=(n, n, n)), jnp.int32)
    x = jnp.asarray(rng.random((n, n, n)), jnp.float32)
    expansion = jnp.ones((2, 6), jnp.float32) * 0.01
    fn = jax.jit(lambda t, idx, x: ke.solve_elasticity(t, t, idx, x, expansion_table=expansion, maxiter=50).stress)
    text = _compiled_text(fn, t, idx, x)
    return hlo_ops(text, loop_body=True), hlo_traffic_bytes(text, loop_body=True) / n**3


def _refer_to_best_copy_bandwidth(node, best):
    """Every row's fraction against the best copy bandwidth measured in the run."""
    if isinstance(node, dict):
        if "achieved_GBs" in node:
            node["fraction_of_copy_bandwidth"] = node["achieved_GBs"] / best
        for value in node.values():
            _refer_to_best_copy_bandwidth(value, best)
    elif isinstance(node, list):
        for value in node:
            _refer_to_best_copy_bandwidth(value, best)
    return node


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="run on the GPU at 64³–512³ (default sizes)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps / matvecs per timed scan")
    parser.add_argument("--skip", nargs="*", default=[], choices=["diffusion", "conduction", "elasticity"])
    parser.add_argument("--pallas", action="store_true",
                        help="also time the Pallas diffusion step (kernels/diffusion_pallas.py; on by "
                             "default with --gpu; interpreted, hence slow, without a GPU)")
    parser.add_argument("--tag", default="", help="suffix of the results name (roofline<TAG>_<device>.json)")
    args = parser.parse_args(argv)
    args.pallas = args.pallas or args.gpu
    if args.gpu and jax.default_backend() != "gpu":
        raise SystemExit(f"--gpu given but JAX's default backend is {jax.default_backend()!r}")
    sizes = args.sizes or ([64, 128, 256, 512] if args.gpu else [64, 128, 256])
    steps = args.steps or (64 if args.gpu else 8)
    repeats = 5 if args.gpu else 3
    info = device_info()
    copy = copy_bandwidth((1 << 31) if args.gpu else (1 << 28))
    bw = copy["copy_bandwidth_GBs"]
    print(f"copy bandwidth: x+1 {copy['x_plus_1_GBs']:.1f} GB/s, copy {copy['copy_GBs']:.1f} GB/s")
    payload = {
        "benchmark": "roofline",
        "device": info,
        "dtype": "float32",
        "copy_bandwidth": copy,
        "note": "fraction_of_copy_bandwidth refers to the best copy bandwidth measured in the run "
                "(copy_bandwidth_best_GBs, measured again before each size); the CPU is shared with "
                "other jobs (load averages below), and grids up to 64³ fit the 32 MiB L3 cache",
        "load_average_1min_at_start": os.getloadavg()[0],
        "bytes_per_voxel_model": {
            "diffusion_reference": DIFFUSION_REF_BYTES,
            "diffusion_fused": DIFFUSION_FUSED_BYTES,
            "conduction_matvec": MATVEC_BYTES,
            "elasticity_cg_iteration": CG_ITERATION_BYTES,
        },
        "diffusion": [],
        "conduction": [],
        "elasticity": [],
    }

    def report(kind, n, label, row):
        print(f"{kind:10s} {n:4d}³ {label:32s} {row['voxel_updates_per_s']:.3e} vox/s  "
              f"{row['achieved_GBs']:8.2f} GB/s  {100 * row['fraction_of_copy_bandwidth']:5.1f} % of copy  "
              f"({row['bytes_per_voxel']} B/voxel, {1e3 * row['seconds_per_step']:.3f} ms)")

    for n in sizes:
        # the CPU is shared: measure the copy bandwidth again next to each size's rows
        bw = max(copy_bandwidth((1 << 31) if args.gpu else (1 << 28))["copy_bandwidth_GBs"], bw)
        payload.setdefault("copy_bandwidth_best_GBs", {})[str(n)] = bw
        try:
            if "diffusion" not in args.skip:
                r = bench_diffusion(n, steps, bw, repeats, pallas=args.pallas)
                payload["diffusion"].append(r)
                for label in ("reference", "fused_rollout", "reference_step_python_loop", "fused_step_python_loop",
                              "fused_step_python_loop_donated"):
                    report("diffusion", n, label, r[label])
                print(f"           fused/reference speed-up {r['speedup_fused_rollout_vs_reference']:.2f}x in a scan, "
                      f"{r['speedup_fused_step_vs_reference_step_python_loops']:.2f}x step by step, "
                      f"max |Δx| after {steps} steps {r['max_abs_difference_after_steps']:.1e}")
                if "pallas_rollout" in r:
                    report("diffusion", n, "pallas_rollout", r["pallas_rollout"])
                    print(f"           Pallas/reference speed-up {r['speedup_pallas_rollout_vs_reference']:.2f}x, "
                          f"max |Δx| vs fused {r['max_abs_difference_pallas_vs_fused']:.1e}")
            if "conduction" not in args.skip:
                r = bench_conduction(n, steps, bw, repeats)
                payload["conduction"].append(r)
                report("conduction", n, "matvec", r["matvec"])
            if "elasticity" not in args.skip:
                r = bench_elasticity(n, max(2, steps // 2), bw, repeats)
                payload["elasticity"].append(r)
                report("elasticity", n, "CG iteration", r["cg_iteration"])
        except (MemoryError, RuntimeError) as err:  # out of (device) memory
            print(f"n = {n}: stopped ({type(err).__name__}: {err})")
            payload.setdefault("errors", []).append(f"n = {n}: {type(err).__name__}: {err}")
        write_result(f"roofline{args.tag}", payload)  # keep what is done if a larger size fails
    if "elasticity" not in args.skip:
        ops, traffic = elasticity_loop_ops()
        payload["elasticity_cg_loop_body_hlo_op_counts"] = ops
        payload["elasticity_cg_loop_body_hlo_traffic_bytes_per_voxel"] = traffic
    payload["load_average_1min_at_end"] = os.getloadavg()[0]
    _refer_to_best_copy_bandwidth(payload, max(payload["copy_bandwidth_best_GBs"].values(), default=bw))
    print("wrote", write_result(f"roofline{args.tag}", payload))


if __name__ == "__main__":
    main()
