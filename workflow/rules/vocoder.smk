"""MelGAN vocoding of generated spectrograms, for listening (design.md §6); not part of FID/MKL."""


rule train_melgan:
    input:
        train=data_shards("train"),
    output:
        checkpoint=f"{R}/vocoder/melgan.ckpt",
        metrics=f"{R}/vocoder/metrics.csv",
    log:
        f"{LOGS}/train_melgan.log",
    benchmark:
        f"{LOGS}/benchmarks/train_melgan.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=fixed_runtime(4320),
        mem_mb=by_attempt(16000),
        gpu=GPU,
    params:
        train=config["vocoder"]["train"],
        audio=config["audio"],
    script:
        "../scripts/train_melgan.py"


rule vocode:
    input:
        mels=f"{R}/runs/{{run}}/samples/mels.npy",
        names=f"{R}/runs/{{run}}/samples/videos.txt",
        vocoder=vocoder_input,
    output:
        directory(f"{R}/runs/{{run}}/audio"),
    log:
        f"{LOGS}/vocode/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/vocode/{{run}}.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=calibrated_runtime("vocode", 60),
        mem_mb=by_attempt(8000),
        gpu=GPU,
    params:
        kind=config["vocoder"]["kind"],
        listen_videos=config["vocoder"]["listen_videos"],
        listen_samples=config["vocoder"]["listen_samples"],
        audio=config["audio"],
    script:
        "../scripts/vocode.py"
