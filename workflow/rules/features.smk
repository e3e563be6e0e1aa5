"""Frame features per backbone and shard (SPEC section 3)."""


rule fetch_weights:
    """Pretrained backbone weights, checksum verified; on the login node for offline GPU nodes."""
    output:
        "resources/weights/{filename}",
    log:
        f"{LOGS}/fetch_weights/{{filename}}.log",
    benchmark:
        f"{LOGS}/benchmarks/fetch_weights/{{filename}}.tsv"
    wildcard_constraints:
        filename="|".join(re.escape(f) for f in WEIGHTS_FILES),
    conda:
        TORCH_ENV
    resources:
        runtime=by_attempt(60),
    script:
        "../scripts/fetch_weights.py"


localrules:
    fetch_weights,


rule extract_features:
    input:
        clips=f"{R}/data/{{split}}/shard{{shard}}",
        weights=feature_weights,
    output:
        features=f"{R}/features/{{backbone}}/{{split}}/shard{{shard}}.npy",
        index=f"{R}/features/{{backbone}}/{{split}}/shard{{shard}}.tsv",
    log:
        f"{LOGS}/extract_features/{{backbone}}-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/extract_features/{{backbone}}-{{split}}-{{shard}}.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=by_attempt(120),
        mem_mb=by_attempt(16000),
        gpu=GPU,
    params:
        backbone=lambda w: {
            "name": w.backbone,
            "weights": backbone_settings(w.backbone)["weights"],
            "image_size": backbone_settings(w.backbone)["image_size"],
        },
        frames={
            "fps": config["video"]["fps"],
            "total": config["video"]["feat_frames"],
            "crop": config["video"]["feat_crop"],
        },
        dtype=config["features"]["dtype"],
    script:
        "../scripts/extract_features.py"
