"""Stage 1: the spectrogram codebook (design.md §4) and the token grids it encodes."""


rule fetch_checkpoint:
    """A released SpecVQGAN file (design.md §10, i2a/spec/released.py), MD5 checked; on the login node."""
    output:
        "resources/checkpoints/{name}.{ext}",
    log:
        f"{LOGS}/fetch_checkpoint/{{name}}.{{ext}}.log",
    benchmark:
        f"{LOGS}/benchmarks/fetch_checkpoint/{{name}}.{{ext}}.tsv"
    wildcard_constraints:
        name="|".join(RELEASED),
        ext="|".join(["ckpt", "txt", *ARCHIVE_MEMBERS]),
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(120),
    params:
        url=lambda w: config["checkpoints"].get(w.name, {}).get("url", released(w.name).url),
        # <name>.<member>: another of the archive's checkpoints than the registry's own
        member=lambda w: w.ext if w.ext in ARCHIVE_MEMBERS else None,
    script:
        "../scripts/fetch_checkpoint.py"


rule train_codebook:
    input:
        train=data_shards("train"),
        valid=data_shards("valid"),
    output:
        checkpoint=f"{R}/codebook/codebook.ckpt",
        metrics=f"{R}/codebook/metrics.csv",
        summary=f"{R}/codebook/summary.json",
    log:
        f"{LOGS}/train_codebook.log",
    benchmark:
        f"{LOGS}/benchmarks/train_codebook.tsv"
    priority: 50  # the long pole: start it before the feature jobs that only the transformers need
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=fixed_runtime(4320),
        mem_mb=by_attempt(32000),
        gpu=GPU,
    params:
        model=config["codebook"]["model"],
        train=config["codebook"]["train"],
        crop_frames=config["audio"]["crop_frames"],
    script:
        "../scripts/train_codebook.py"


rule encode_tokens:
    input:
        clips=f"{R}/data/{{split}}/shard{{shard}}",
        codebook=codebook_checkpoint(),
    output:
        f"{R}/codebook/tokens/{{split}}/shard{{shard}}.npy",
    log:
        f"{LOGS}/encode_tokens/{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/encode_tokens/{{split}}-{{shard}}.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=calibrated_runtime("encode_tokens", 60),
        mem_mb=by_attempt(8000),
        gpu=GPU,
    params:
        crop_frames=config["audio"]["crop_frames"],
    script:
        "../scripts/encode_tokens.py"
