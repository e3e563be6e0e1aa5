"""Stage 2: one GPT per run of the grid (design.md §5), and its samples."""


rule train_gpt:
    input:
        train_tokens=token_files("train"),
        valid_tokens=token_files("valid"),
        train_features=run_features("train"),
        valid_features=run_features("valid"),
        codebook=codebook_checkpoint(),
        stats=run_feature_stats,
        lr_find=lambda w: ([f"{R}/runs/{w.run}/lr_find.json"] if RUN_SPECS[w.run].train.base_lr == "auto" else []),
    output:
        best=f"{R}/runs/{{run}}/best.ckpt",
        metrics=f"{R}/runs/{{run}}/metrics.csv",
        summary=f"{R}/runs/{{run}}/train.json",
    log:
        f"{LOGS}/train_gpt/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/train_gpt/{{run}}.tsv"
    retries: TRAIN_RETRIES
    conda:
        TORCH_ENV
    threads: lambda w: training_cpus(RUN_SPECS[w.run])
    resources:
        runtime=training_runtime,
        mem_mb=lambda w, attempt: 16000 * RUN_SPECS[w.run].train.gpus * attempt,
        gpu=lambda w: RUN_SPECS[w.run].train.gpus * GPU,
    params:
        run=lambda w: RUN_SPECS[w.run].training_view(),
        # last.ckpt lives here, outside the outputs, so a killed job resumes instead of starting over
        state_dir=lambda w: f"{R}/runs/{w.run}/state",
    script:
        "../scripts/train_gpt.py"


rule lr_find:
    """Lightning's learning-rate range test on a run's training data (`lr_find: true`): the loss as the LR grows
    exponentially from lr_finder.min_lr to max_lr, and the LR it suggests (which `base_lr: auto` trains with)."""
    input:
        train_tokens=token_files("train"),
        valid_tokens=token_files("valid"),
        train_features=run_features("train"),
        valid_features=run_features("valid"),
        codebook=codebook_checkpoint(),
        stats=run_feature_stats,
    output:
        f"{R}/runs/{{run}}/lr_find.json",
    log:
        f"{LOGS}/lr_find/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/lr_find/{{run}}.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=calibrated_runtime("lr_find", 60, run_spec),
        mem_mb=by_attempt(16000),
        gpu=GPU,
    params:
        run=lambda w: RUN_SPECS[w.run].training_view(),
        settings=config["lr_finder"],
    script:
        "../scripts/lr_find.py"


rule sample_tokens:
    """Top-k samples per validation video, decoded to spectrograms by the codebook; as `shuffled`, the control
    where each video is given another video's features (same transformer, same seeds); as bf16 (or fp32), the
    same samples in the other sampling precision (controls.precision). Threads: the job uses exactly `threads`
    (i2a.pipeline.jobs.start_job sets torch's and OpenMP's counts from it; docs/sampling.md says how to size them)."""
    input:
        transformer=transformer_checkpoint,
        codebook=codebook_checkpoint(),
        clips=data_shards("valid"),
        features=run_features("valid"),
    output:
        tokens=f"{R}/runs/{{run}}/{{kind}}/tokens.npy",
        mels=f"{R}/runs/{{run}}/{{kind}}/mels.npy",
        names=f"{R}/runs/{{run}}/{{kind}}/videos.txt",
    log:
        f"{LOGS}/sample_tokens/{{run}}-{{kind}}.log",
    benchmark:
        f"{LOGS}/benchmarks/sample_tokens/{{run}}-{{kind}}.tsv"
    wildcard_constraints:
        kind=f"samples|shuffled|{OTHER_PRECISION}",
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=calibrated_runtime("sample_tokens", 240, run_spec),
        mem_mb=by_attempt(16000),
        gpu=GPU,
    params:
        run=lambda w: sampled_spec(w).to_dict(),
        shuffled=lambda w: w.kind == "shuffled",
    script:
        "../scripts/sample_tokens.py"
