"""``asd-ray ingest`` on many WAV files: its time and the driver's peak memory at 1x, 10x, 50x.

Writes a DCASE 2022-2025 folder (``<machine>/{train,test}/section_00_source_{train,test}_
normal_NNNNNNNN.wav``; 10 machine types, 90 % train) of short clips (0.1 s: the bytes of every
file are the same, the names differ), then runs ``asd-ray ingest`` on it in a process of its own
(its local Ray started there) and samples that process's resident memory every 50 ms: the driver,
which lists the files and sends the shard-writing tasks. The shard size is set so that a shard
holds as many files as a 64 MB shard holds 10 s clips (200), so the chunks in flight are a real
run's, not thousands of tiny files each.

    python benchmarks/ingest_scale.py                      # 1x = 10,000 files; 10x; 50x = 500,000
"""

import io
import os
import sys

import numpy as np
import soundfile as sf

import peak_memory

MACHINES = 10
FILES_PER_SHARD = 200


def wav_bytes(seconds: float = 0.1, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).normal(0, 3000, int(seconds * rate)).astype(np.int16)
    sf.write(buf, noise, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_tree(root: str, files: int) -> None:
    data = wav_bytes()
    for m in range(MACHINES):
        for split in ("train", "test"):
            os.makedirs(f"{root}/machine{m}/{split}", exist_ok=True)
    for i in range(files):
        split = "test" if (i // MACHINES) % 10 == 9 else "train"
        with open(f"{root}/machine{i % MACHINES}/{split}/section_00_source_{split}_normal_{i:08d}.wav", "wb") as f:
            f.write(data)
    open(f"{root}/.complete", "w").close()


def ingest(src: str, dest: str, shard_mb: float) -> tuple[float, float, str]:
    """Seconds, the driver's peak resident memory (GiB) and the summary line of ``asd-ray ingest``."""
    seconds, peak, out = peak_memory.run([sys.executable, "-m", "asd_ray.cli", "ingest", src, dest,
                                          f"shard_mb={shard_mb}"])
    return seconds, peak, next(line for line in out.splitlines() if line.startswith("ingested"))


def main() -> None:
    args, root = peak_memory.scale_arguments(__doc__, "files", 10_000, "WAV files", "ingest-scale-")
    shard_mb = FILES_PER_SHARD * len(wav_bytes()) / 1e6
    print("| scale | WAV files | seconds | driver peak memory (GiB) | summary |\n|---|---|---|---|---|")
    for scale in args.scales:
        files = args.files * scale
        src = os.path.join(root, f"wav-{files}")
        if not os.path.exists(f"{src}/.complete"):
            write_tree(src, files)
        seconds, peak, summary = ingest(src, os.path.join(root, f"clips-{files}"), shard_mb)
        print(f"| {scale}x | {files:,} | {seconds:.1f} | {peak:.2f} | {summary.split(';')[0]} |", flush=True)


if __name__ == "__main__":
    main()
