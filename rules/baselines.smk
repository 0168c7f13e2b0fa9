# Baselines: the 3D side of the comparison. A fixed-shape volume store per shard, then one training job
# per baseline and fold, each writing exactly what Stage 2 writes (predictions, metrics.json, curve).

BASELINES = config["baselines"]["models"]
BL = f"{RESULTS}/baselines/{{baseline}}/fold{{fold}}"


wildcard_constraints:
    baseline="|".join(BASELINES) or "^$",


def mask_args(wildcards):
    """The lesion masks of a dataset: its `masks` file, or a synthetic cohort's ground truth."""
    entry = DATASETS[wildcards.dataset]
    path = entry.get("masks") or (f"{synthetic_dir(wildcards.dataset)}/truth/masks.zarr" if is_synthetic(wildcards.dataset) else None)
    if not path:
        return ""
    return f"--masks {shlex.quote(path)} --salt {shlex.quote(config['ingest']['pseudonym_salt'])}"


def volume_shard_inputs(wildcards):
    inputs = {"store": rules.resample_shard.output[0].format(dataset=wildcards.dataset, shard=wildcards.shard)}
    if is_synthetic(wildcards.dataset):
        inputs["cohort"] = synthetic_dir(wildcards.dataset)
    elif DATASETS[wildcards.dataset].get("masks"):
        inputs["masks"] = DATASETS[wildcards.dataset]["masks"]
    return inputs


rule volume_shard:
    input:
        unpack(volume_shard_inputs),
    output:
        store=directory(f"{RESULTS}/{{dataset}}/volumes/shard-{{shard}}.zarr"),
        table=f"{RESULTS}/{{dataset}}/volumes/shard-{{shard}}.parquet",
        rejected=f"{RESULTS}/{{dataset}}/volumes/shard-{{shard}}.rejected.csv",
    params:
        settings=as_json({
            "volume": config["baselines"]["volume"],
            **{k: config["preprocess"][k] for k in ("crop", "threshold_hu", "opening_mm", "margin_mm", "windows", "size")},
        }),
        masks=mask_args,
    log:
        f"{RESULTS}/logs/volume_shard/{{dataset}}-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/volume_shard/{{dataset}}-{{shard}}.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d volumes --in-store {input.store} --out-store {output.store} --out-table {output.table} "
        "--out-rejected {output.rejected} --settings {params.settings:q} {params.masks} > {log} 2>&1"


rule volume_index:
    input:
        [f"{RESULTS}/{d}/volumes/shard-{k}.parquet" for d in DATASETS for k in shard_ids(d)],
    output:
        f"{RESULTS}/index/volumes.parquet",
    params:
        tables=per_shard(rules.volume_shard.output.table),
    log:
        f"{RESULTS}/logs/volume_index/volume_index.log",
    benchmark:
        f"{RESULTS}/benchmarks/volume_index/volume_index.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d volume-index --tables {params.tables} --out {output} > {log} 2>&1"


def baseline_backbone(name):
    return BASELINES[name].get("backbone", config["stage1"]["backbones"][0])


def baseline_kind(name):
    from ct25d.models.families import inputs_of

    return inputs_of(BASELINES[name]["name"])


def baseline_inputs(wildcards):
    """What a baseline reads: the volume index, the fold's Stage-1 embeddings or weights, or the slices."""
    name, fold = wildcards.baseline, wildcards.fold
    s1 = f"{RESULTS}/stage1/{baseline_backbone(name)}/fold{fold}"
    inputs = {"studies": rules.index.output.studies}
    kind = baseline_kind(name)
    if BASELINES[name].get("init") == "stage1":
        inputs["checkpoint"] = f"{s1}/best.pt"
    if kind == "volume":
        inputs["volumes"] = rules.volume_index.output[0]
        if BASELINES[name].get("supervision") == "slice":  # the slice labels
            inputs["index"] = rules.index.output.slices
    elif kind == "embeddings":
        inputs["embeddings"] = f"{s1}/embeddings/rows.parquet"
    else:
        inputs["index"] = rules.index.output.slices
    return inputs


def baseline_args(wildcards, input):
    """The baseline's input flags (embeddings: the folder that holds `rows.parquet` and the shards)."""
    flags = {"volumes": "--volumes", "checkpoint": "--stage1-checkpoint", "embeddings": "--embeddings",
             "index": "--index"}
    paths = {key: os.path.dirname(input[key]) if key == "embeddings" else input[key] for key in flags if key in input.keys()}
    return " ".join(f"{flags[key]} {shlex.quote(str(path))}" for key, path in paths.items())


def baseline_entry(wildcards):
    """The model entry, with the backbone made explicit for the families built on a 2D backbone."""
    entry = dict(BASELINES[wildcards.baseline])
    if entry["name"] in ("acs", "cnn25", "thick2d"):
        entry.setdefault("backbone", baseline_backbone(wildcards.baseline))
    return as_json(entry)


def baseline_stage1(wildcards):
    """The `stage1` block a thickened-2D baseline trains with (its entry's keys override it)."""
    if baseline_kind(wildcards.baseline) != "slices":
        return as_json({})
    skip = (*STAGE1_RUN_KEYS, *STAGE1_RUNTIME_KEYS)
    return as_json({k: v for k, v in config["stage1"].items() if k not in skip})


BASELINE_RUNTIME = as_json({"device": config["baselines"]["device"]})
BASELINE_SETTINGS = as_json({k: v for k, v in config["baselines"].items() if k not in ("models", "volume", "device", "mem_mb")})


rule train_baseline:
    input:
        unpack(baseline_inputs),
    output:
        best=f"{BL}/best.pt",
        metrics=f"{BL}/metrics.json",
        studies=f"{BL}/predictions_studies.parquet",
        slices=f"{BL}/predictions_slices.parquet",
        curve=report(f"{BL}/learning_curve.png", category="Baselines", labels={"baseline": "{baseline}", "fold": "{fold}"}),
    params:
        entry=baseline_entry,
        settings=BASELINE_SETTINGS,
        stage1=baseline_stage1,
        inputs=baseline_args,
        out=BL,
    log:
        f"{RESULTS}/logs/train_baseline/{{baseline}}-{{fold}}.log",
    benchmark:
        f"{BL}/benchmark.tsv"
    threads: 1
    resources:
        gpu=1,
        mem_mb=config["baselines"]["mem_mb"],
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d train-baseline --entry {params.entry:q} --label {wildcards.baseline} --settings {params.settings:q} "
        "--stage1 {params.stage1:q} --studies {input.studies} --fold {wildcards.fold} {params.inputs} "
        "--runtime {BASELINE_RUNTIME:q} --mem-mb {resources.mem_mb} --workers {threads} --out {params.out} "
        "> {log} 2>&1"


BASELINE_RUNS = [(name, fold) for name in BASELINES for fold in config["stage1"]["folds"]]

for _baseline in BASELINES:

    rule:
        name:
            f"baseline_{_baseline}"
        input:
            [f"{RESULTS}/baselines/{_baseline}/fold{f}/metrics.json" for f in config["stage1"]["folds"]],


rule baselines:
    input:
        [f"{RESULTS}/baselines/{b}/fold{f}/metrics.json" for b, f in BASELINE_RUNS],
