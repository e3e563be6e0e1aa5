"""Stage 2: one GPT per run of the grid (SPEC section 5), and its samples."""


rule train_gpt:
    input:
        train_tokens=token_files("train"),
        valid_tokens=token_files("valid"),
        train_features=run_features("train"),
        valid_features=run_features("valid"),
        codebook=codebook_checkpoint(),
    output:
        best=f"{R}/runs/{{run}}/best.ckpt",
        metrics=f"{R}/runs/{{run}}/metrics.csv",
        summary=f"{R}/runs/{{run}}/train.json",
    log:
        f"{LOGS}/train_gpt/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/train_gpt/{{run}}.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=lambda w, attempt: gpu_runtime_minutes(RUN_SPECS[w.run]) * attempt,
        mem_mb=lambda w, attempt: 16000 * RUN_SPECS[w.run].train.gpus * attempt,
        gpu=lambda w: RUN_SPECS[w.run].train.gpus * GPU,
    params:
        run=lambda w: RUN_SPECS[w.run].training_view(),
        # last.ckpt lives here, outside the outputs, so a killed job resumes instead of starting over
        state_dir=lambda w: f"{R}/runs/{w.run}/state",
    script:
        "../scripts/train_gpt.py"


rule sample_tokens:
    """Top-k samples per validation video, decoded to spectrograms by the codebook."""
    input:
        transformer=transformer_checkpoint,
        codebook=codebook_checkpoint(),
        clips=data_shards("valid"),
        features=run_features("valid"),
    output:
        tokens=f"{R}/runs/{{run}}/samples/tokens.npy",
        mels=f"{R}/runs/{{run}}/samples/mels.npy",
        names=f"{R}/runs/{{run}}/samples/videos.txt",
    log:
        f"{LOGS}/sample_tokens/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/sample_tokens/{{run}}.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=by_attempt(240),
        mem_mb=by_attempt(16000),
        gpu=GPU,
    params:
        run=lambda w: RUN_SPECS[w.run].to_dict(),
    script:
        "../scripts/sample_tokens.py"
