# Where the models looked: Grad-CAM of each slice and 3D model's positive calls on each fold, and their
# pointing game against the lesion masks (a synthetic cohort's truth, or `datasets.<d>.masks`), read by
# `compare` when `compare.saliency.enabled`; one gallery per run and the report's saliency.png.

SALIENCY = config["compare"]["saliency"]
SALIENCY_SETTINGS = as_json({k: v for k, v in SALIENCY.items() if k != "enabled"})
SAL = f"{RESULTS}/saliency"
# The image models: Stage 1's head on each backbone, the thickened 2D and every 3D family (not the
# embedding models: they read no image).
SALIENCY_BASELINES = [b for b in BASELINES if baseline_kind(b) in ("slices", "volume")]
SALIENCY_RUNS = [
    *((f"{b}:head/fold{f}", f"{SAL}/stage1/{b}/fold{f}") for b, f in STAGE1_RUNS),
    *((f"{name}/fold{f}", f"{SAL}/baselines/{name}/fold{f}") for name, f in BASELINE_RUNS
      if name in SALIENCY_BASELINES),
]


def mask_files():
    """{dataset: lesion masks} of the datasets that have them."""
    out = {d: f"{synthetic_dir(d)}/truth/masks.zarr" for d in DATASETS if is_synthetic(d)}
    return {**out, **{d: DATASETS[d]["masks"] for d in DATASETS if DATASETS[d].get("masks")}}


def mask_inputs():
    """What the masks come from: a synthetic cohort's folder (its rule's output), a real mask file."""
    return [synthetic_dir(d) if is_synthetic(d) else DATASETS[d]["masks"] for d in mask_files()]


MASK_ARGS = " ".join(f"{d}={shlex.quote(path)}" for d, path in mask_files().items())
SALT = shlex.quote(config["ingest"]["pseudonym_salt"])


rule saliency_stage1:
    input:
        checkpoint=rules.train_slices.output.best,
        head=rules.eval_stage1.output.head,
        index=rules.index.output.slices,
        masks=mask_inputs(),
    output:
        pointing=f"{SAL}/stage1/{{backbone}}/fold{{fold}}/pointing.parquet",
        gallery=f"{SAL}/stage1/{{backbone}}/fold{{fold}}/gallery.png",
    params:
        settings=SALIENCY_SETTINGS,
        masks=MASK_ARGS,
        predictions=lambda w, input: os.path.dirname(input.head),
        out=f"{SAL}/stage1/{{backbone}}/fold{{fold}}",
    log:
        f"{RESULTS}/logs/saliency/stage1-{{backbone}}-{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/saliency/stage1-{{backbone}}-{{fold}}.tsv",
    # As soon as its model exists (a few seconds), not all of them after the last training job.
    priority: 1
    threads: 1
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d saliency --checkpoint {input.checkpoint} --predictions {params.predictions} --index {input.index} "
        "--masks {params.masks} --salt {SALT} --key {wildcards.backbone}:head --fold {wildcards.fold} "
        "--settings {params.settings:q} --threads {threads} --out {params.out} > {log} 2>&1"


def saliency_baseline_inputs(wildcards):
    inputs = {"checkpoint": rules.train_baseline.output.best.format(**wildcards),
              "studies": rules.train_baseline.output.studies.format(**wildcards),
              "index": rules.index.output.slices, "masks": mask_inputs()}
    if baseline_kind(wildcards.baseline) == "volume":
        inputs["volumes"] = rules.volume_index.output[0]
    return inputs


rule saliency_baseline:
    input:
        unpack(saliency_baseline_inputs),
    output:
        pointing=f"{SAL}/baselines/{{baseline}}/fold{{fold}}/pointing.parquet",
        gallery=f"{SAL}/baselines/{{baseline}}/fold{{fold}}/gallery.png",
    params:
        settings=SALIENCY_SETTINGS,
        masks=MASK_ARGS,
        volumes=lambda w, input: f"--volumes {input.volumes}" if "volumes" in input.keys() else "",
        predictions=lambda w, input: os.path.dirname(input.studies),
        out=f"{SAL}/baselines/{{baseline}}/fold{{fold}}",
    log:
        f"{RESULTS}/logs/saliency/{{baseline}}-{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/saliency/{{baseline}}-{{fold}}.tsv",
    priority: 1
    threads: 1
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d saliency --checkpoint {input.checkpoint} --predictions {params.predictions} --index {input.index} "
        "{params.volumes} --masks {params.masks} --salt {SALT} --key {wildcards.baseline} --fold {wildcards.fold} "
        "--settings {params.settings:q} --threads {threads} --out {params.out} > {log} 2>&1"


rule saliency_gallery:
    input:
        [f"{folder}/gallery.png" for _, folder in SALIENCY_RUNS],
    output:
        report(f"{RESULTS}/comparison/saliency.png", category="Comparison", subcategory="Where the models looked",
               caption="../workflow/report/saliency.rst"),
    params:
        galleries=[f"{name}={folder}/gallery.png" for name, folder in SALIENCY_RUNS],
    log:
        f"{RESULTS}/logs/saliency/gallery.log",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d saliency-gallery --galleries {params.galleries} --out {output} > {log} 2>&1"


# What `compare` reads of the saliency runs (nothing when disabled).
SALIENCY_POINTING = [f"{folder}/pointing.parquet" for _, folder in SALIENCY_RUNS] if SALIENCY["enabled"] else []
