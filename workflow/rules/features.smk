"""Frame features per backbone and shard (design.md §3)."""


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
    localrule: True
    conda:
        TORCH_ENV
    resources:
        runtime=fixed_runtime(60),
    script:
        "../scripts/fetch_weights.py"


rule extract_features:
    input:
        clips=f"{R}/data/{{split}}/shard{{shard}}",
        videos=authors_videos,
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
        runtime=calibrated_runtime("extract_features", 120),
        # frames are resized as decoded: clips in flight are held at 224 px; the rehearsal's ResNet50 job peaked at
        # 2.4 GB on CPU (activations included), plus ~3 GB of CUDA runtime on a GPU node
        mem_mb=by_attempt(8000),
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
        precision=config["features"]["precision"],
    script:
        "../scripts/extract_features.py"


rule feature_summary:
    """A backbone's feature statistics (per dimension, training split: `feature_norm: standard` uses them) and a
    linear probe of the classes (how much class information the features hand the GPT)."""
    input:
        train=lambda w: feature_files(w.backbone, "train"),
        valid=lambda w: feature_files(w.backbone, "valid"),
        train_index=lambda w: feature_index_files(w.backbone, "train"),
        valid_index=lambda w: feature_index_files(w.backbone, "valid"),
    output:
        stats=f"{R}/features/{{backbone}}/stats.npz",
        probe=f"{R}/features/{{backbone}}/probe.json",
    log:
        f"{LOGS}/feature_summary/{{backbone}}.log",
    benchmark:
        f"{LOGS}/benchmarks/feature_summary/{{backbone}}.tsv"
    conda:
        TORCH_ENV
    resources:
        runtime=fixed_runtime(60),
        mem_mb=by_attempt(8000),
    script:
        "../scripts/feature_summary.py"
