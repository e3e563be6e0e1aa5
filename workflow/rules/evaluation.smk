"""Melception FID and MKL per run (SPEC section 7), and the study's table (SPEC section 9)."""


rule train_melception:
    """A Melception-architecture classifier on the dataset's own classes (the demo's stand-in for VGGSound's)."""
    input:
        clips=f"{R}/data/clips.tsv",
        train=data_shards("train"),
        valid=data_shards("valid"),
    output:
        f"{R}/eval/melception.ckpt",
    log:
        f"{LOGS}/train_melception.log",
    benchmark:
        f"{LOGS}/benchmarks/train_melception.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=by_attempt(1440),
        mem_mb=by_attempt(16000),
        gpu=GPU,
    params:
        train=config["melception"]["train"],
        crop_frames=config["audio"]["crop_frames"],
    script:
        "../scripts/train_melception.py"


rule score_reference:
    """Melception outputs of the real validation spectrograms: one reference set shared by every run."""
    input:
        clips=data_shards("valid"),
        melception=melception_checkpoint(),
        stats=melception_stats(),
    output:
        f"{R}/eval/reference.npz",
    log:
        f"{LOGS}/score_reference.log",
    benchmark:
        f"{LOGS}/benchmarks/score_reference.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=by_attempt(60),
        mem_mb=by_attempt(8000),
        gpu=GPU,
    params:
        crop_frames=config["audio"]["crop_frames"],
    script:
        "../scripts/score_reference.py"


rule score_run:
    input:
        mels=f"{R}/runs/{{run}}/samples/mels.npy",
        names=f"{R}/runs/{{run}}/samples/videos.txt",
        reference=f"{R}/eval/reference.npz",
        melception=melception_checkpoint(),
        stats=melception_stats(),
    output:
        f"{R}/runs/{{run}}/scores.json",
    log:
        f"{LOGS}/score_run/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/score_run/{{run}}.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=by_attempt(120),
        mem_mb=by_attempt(16000),
        gpu=GPU,
    params:
        metrics=config["metrics"],
        seeds=config["sampling"]["seeds"],
    script:
        "../scripts/score_run.py"


rule aggregate_table:
    input:
        unpack(table_inputs),
        audio=expand(f"{R}/runs/{{run}}/audio", run=RUNS),
        clips=f"{R}/data/clips.tsv",
        manifests=data_shards("train") + data_shards("valid"),
    output:
        report(
            f"{R}/table.csv",
            caption="../report/table.rst",
            category="Results",
        ),
    log:
        f"{LOGS}/aggregate_table.log",
    benchmark:
        f"{LOGS}/benchmarks/aggregate_table.tsv"
    conda:
        CPU_ENV
    resources:
        runtime=by_attempt(10),
    params:
        runs=[spec.to_dict() for spec in RUN_SPECS.values()],
    script:
        "../scripts/aggregate_table.py"


localrules:
    aggregate_table,
