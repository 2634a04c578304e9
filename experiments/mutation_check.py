"""How many planted bugs does the default test suite catch? A mutation check of the core modules.

Each mutant is one plausible bug, written as (name, file, the original text, the planted text): the
kind of slip a student makes in an exercise (a multiplied temperature, a null branch that keeps the
melody, a missing causal mask, an off-by-one warm-up). For each one the script copies the repository's
tracked files to a temporary folder, plants the bug, runs the default suite there (`pytest -q -x`, the
targeted test files first so a caught bug stops early) and counts it caught if the suite fails.
An original text that is no longer found is an error: the list must follow the code.

    python -m experiments.mutation_check              # every mutant (a few minutes each when missed)
    python -m experiments.mutation_check --list
    python -m experiments.mutation_check --only sampler-temperature guidance-null-melody
    python -m experiments.mutation_check --distributed   # data-parallel faults, against the torchrun tests
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST = ["tests/test_known_answers.py", "tests/test_autotune.py", "tests/test_fast_paths.py", "tests/test_patterns.py", "tests/test_rvq.py", "tests/test_transformer.py",
         "tests/test_musicgen.py", "tests/test_encodec.py", "tests/test_train.py", "tests/test_lora.py",
         "tests/test_finetune.py"]

MUTANTS = [
    # sampler (§3)
    ("sampler-temperature", "musicgen.py", "logits.float() / temperature", "logits.float() * temperature"),
    ("sampler-top-k-off-by-one", "musicgen.py", "card - top_k + 1", "card - top_k"),
    ("sampler-top-p-mass", "musicgen.py", "sorted_probs.cumsum(-1) - sorted_probs > top_p",
     "sorted_probs.cumsum(-1) > top_p"),
    # classifier-free guidance
    ("guidance-mix", "musicgen.py", "null + cfg_coef * (cond - null)", "cond + cfg_coef * (cond - null)"),
    ("guidance-null-melody", "musicgen.py", "torch.cat([lm.fit_chroma(chroma), lm.null_chroma.expand(B, -1, -1)])",
     "torch.cat([lm.fit_chroma(chroma), lm.fit_chroma(chroma)])"),
    ("guidance-null-text", "musicgen.py", "text_mask = torch.cat([text_mask, torch.zeros_like(text_mask)])",
     "text_mask = torch.cat([text_mask, text_mask])"),
    # sliding windows and the melody's alignment
    ("window-no-context", "musicgen.py", "start = max(0, codes.shape[-1] - (window - stride)) if",
     "start = codes.shape[-1] if"),
    ("window-melody-offset", "musicgen.py", "chroma = self._melody_chroma(melody, start)",
     "chroma = self._melody_chroma(melody, 0)"),
    ("melody-index-frame-rate", "lm.py", "index = (seconds * self.chroma.frame_rate)",
     "index = (seconds * self.cfg.frame_rate)"),
    ("melody-crop-ignores-start", "data.py", "start * self.hop, self.window * self.hop)",
     "0, self.window * self.hop)"),
    # where the conditions enter (§2.4): the prefix, the per-step melody, the fill, the null melody
    ("prefix-fed-again", "lm.py", "if fresh and prefix is not None:", "if prefix is not None:"),
    ("sum-melody-offset-ignores-cache", "lm.py", "first = 0 if fresh else cache.length - P", "first = 0"),
    ("chroma-fill-with-silence", "lm.py", "return chroma.repeat(1, repeats, 1)[:, :self.melody_frames]",
     "return F.pad(chroma, (0, 0, 0, self.melody_frames - chroma.shape[1]))"),
    ("null-melody-all-zero", "lm.py", "self.register_buffer(\"null_chroma\", self.chroma(window), persistent=False)",
     "self.register_buffer(\"null_chroma\", 0 * self.chroma(window), persistent=False)"),
    # patterns (§2.2)
    ("pattern-delay-shift", "patterns.py", "layout[1 + t + delay].append((k, t))", "layout[t + delay].append((k, t))"),
    ("pattern-logits-not-shifted", "patterns.py", "source = self.step_of(T, logits.device) - 1",
     "source = self.step_of(T, logits.device)"),
    # attention and cache (§2.3)
    ("attention-no-causal-mask", "transformer.py", "if self.causal and n_queries > 1:", "if False:"),
    ("cache-positions-restart", "transformer.py", "offset = cache.start + cache.length", "offset = cache.length"),
    ("cache-overwrites-the-past", "transformer.py", "self.key_buffer[:, :, self.length:end] = keys",
     "self.key_buffer[:, :, :S] = keys"),
    # quantizer (§2.1)
    ("vq-no-straight-through", "rvq.py", "quantized = x + (quantized - x).detach()", "quantized = quantized"),
    ("rvq-no-straight-through", "rvq.py", "z_hat = z + (quantized_sum - z).detach()", "z_hat = quantized_sum"),
    ("rvq-residual-not-subtracted", "rvq.py", "residual = residual - quantized.detach()", "residual = residual"),
    # losses
    ("hinge-signs-swapped", "losses.py", "F.relu(1 - real).mean() + F.relu(1 + fake).mean()",
     "F.relu(1 + real).mean() + F.relu(1 - fake).mean()"),
    ("lm-loss-start-weight-misplaced", "lm.py", "frame_weight[:self.cfg.start_frames] = self.cfg.start_weight",
     "frame_weight[self.cfg.start_frames:] = self.cfg.start_weight"),
    ("chroma-not-one-hot", "conditioners.py",
     "chroma = torch.nn.functional.one_hot(chroma.argmax(dim=-1), 12).float()", "chroma = chroma"),
    ("condition-dropout-melody-kept", "conditioners.py", "return null, null | (draw[:, 1] < self.p_melody)",
     "return null, draw[:, 1] < self.p_melody"),
    # training plumbing
    ("lr-warmup-off-by-one", "stages.py", "return lr * (step + 1) / warmup", "return lr * step / warmup"),
    # the LM's paper forms and the fast forms derived from them
    ("embeddings-first-table-only", "lm.py", "return sum(table(sequence[:, k]) for k, table in enumerate(self.embeddings))",
     "return self.embeddings[0](sequence[:, 0])"),
    ("stacked-heads-never-rebuilt", "lm.py", "if self._stacked_from is None or any(",
     "if self._stacked_from is None or False and any("),
    ("transposed-product-not-transposed", "transformer.py", "y = torch.mm(weight, rows.t()).t().contiguous()",
     "y = torch.mm(weight, rows.t()).reshape(rows.shape[0], -1)"),
    ("autotune-keeps-the-slowest", "autotune.py", 'return {"choice": min(best, key=best.get)',
     'return {"choice": max(best, key=best.get)'),
    # fine-tuning a published model: LoRA, the frozen T5, the null text, the run's base, resume
    ("lora-merge-unscaled", "lora.py", "self.base.weight + self.scaling * (self.lora_B @ self.lora_A)",
     "self.base.weight + self.lora_B @ self.lora_A"),
    ("finetune-t5-trains", "lm.py", "self.t5 = T5Encoder(cfg).requires_grad_(False)", "self.t5 = T5Encoder(cfg)"),
    ("null-text-keeps-t5-eos", "conditioners.py",
     "return ids, mask & torch.tensor([d != \"\" for d in descriptions])[:, None]", "return ids, mask"),
    ("finetune-base-change-unchecked", "published/finetune.py", "if cached_checksum(folder.resolve()) != base[\"sha256\"]:",
     "if False:"),
    # the LM stage's kept chroma (data.CodeWindows)
    ("chroma-memo-keyed-by-clip", "data.py", "            self.memo[i, start] = chroma", "            self.memo[i, 0] = chroma"),
    ("finetune-resume-without-optimizer", "stages.py", "optimizer.load_state_dict(finetune.resume(ckpt, lm, resume_path))",
     "finetune.resume(ckpt, lm, resume_path)"),
]

# Data-parallel faults, run against the multi-process tests (slow: torchrun, 2 processes) instead.
DISTRIBUTED = ["-m", "slow", "tests/test_distributed.py", "tests/test_rvq_distributed.py"]
DISTRIBUTED_MUTANTS = [
    ("ddp-rvq-statistics-not-reduced", "rvq.py", "        _all_reduce_sum(counts)\n        _all_reduce_sum(sums)\n", ""),
    ("ddp-revival-from-own-slice", "rvq.py", "        x = _all_gather_rows(x)\n", ""),
    ("ddp-rank-trains-wrong-slice", "ddp.py", "return items[rank.index * share:(rank.index + 1) * share]",
     "return items[:share]"),
    ("ddp-gradient-not-averaged", "ddp.py", "    return torch.nn.parallel.DistributedDataParallel(model, ",
     "    return model\n    return torch.nn.parallel.DistributedDataParallel(model, "),
    ("ddp-gradient-summed", "ddp.py", "    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, "
     "find_unused_parameters=find_unused,\n                                                     forward_sync_buffers=False)",
     "    wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused, "
     "forward_sync_buffers=False)\n    wrapped.register_comm_hook(None, lambda _, bucket: dist.all_reduce(bucket.buffer(), "
     "async_op=True).get_future().then(lambda f: f.value()[0]))  # no division by the rank count\n    return wrapped"),
]


def run_mutant(name, file, original, planted, timeout, tests):
    """-> (caught: bool, seconds, the failing tests (with -x: the first))."""
    with tempfile.TemporaryDirectory() as tmp:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        for relative in files:
            if (ROOT / relative).is_file():
                (Path(tmp) / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, Path(tmp) / relative)
        target = Path(tmp) / file
        source = target.read_text()
        if source.count(original) != 1:
            raise SystemExit(f"error: mutant {name}: {original!r} occurs {source.count(original)} times in {file}")
        target.write_text(source.replace(original, planted))
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                                cwd=tmp, capture_output=True, text=True, timeout=timeout)
        failed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return result.returncode != 0, time.perf_counter() - started, " ".join(failed)


def main(argv=None):
    p = argparse.ArgumentParser(description="Plant one bug at a time and count the ones the default suite catches.")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--only", nargs="+", help="run only these mutants")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutant")
    p.add_argument("--distributed", action="store_true",
                   help="the data-parallel mutants, against every multi-process test (not -x: all that fail are named)")
    args = p.parse_args(argv)
    pool, tests = (DISTRIBUTED_MUTANTS, DISTRIBUTED) if args.distributed else (MUTANTS, ("-x", *FIRST, "tests"))
    mutants = [m for m in pool if not args.only or m[0] in args.only]
    if args.list or not mutants:
        for name, file, original, planted in pool:
            print(f"{name:32s} {file:16s} {original!r} -> {planted!r}")
        return
    caught = 0
    for name, file, original, planted in mutants:
        hit, seconds, test = run_mutant(name, file, original, planted, args.timeout, tests)
        caught += hit
        print(f"{'caught' if hit else 'MISSED':6s} {name:32s} {seconds:5.0f} s  {test}", flush=True)
    print(f"{caught} of {len(mutants)} planted bugs caught ({100 * caught / len(mutants):.0f}%)")


if __name__ == "__main__":
    main()
