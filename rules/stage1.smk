# Stage 1: a 2D timm CNN on windowed slices (one job per backbone and fold), embeddings of every
# slice, and the seed's head-vs-cosine evaluation. GPU jobs ask `gpu=1` and lease their own device.

S1 = f"{RESULTS}/stage1/{{backbone}}/fold{{fold}}"
EMB = f"{S1}/embeddings"  # one <dataset>-shard-<k>.zarr per slice-store shard (one job each), rows.parquet


rule train_slices:
    input:
        rules.index.output.slices,
    output:
        best=f"{S1}/best.pt",
        metrics=f"{S1}/metrics.csv",
        curve=report(f"{S1}/learning_curve.png", category="Stage 1", labels={"backbone": "{backbone}", "fold": "{fold}"}),
    params:
        settings=stage1_settings,
        out=S1,
    log:
        f"{RESULTS}/logs/train_slices/{{backbone}}-{{fold}}.log",
    benchmark:
        f"{S1}/benchmark.tsv"
    # Stage 1 and its embeddings head the longest chain (Stage 2, ACS, 2.5CNN, thickened 2D): they go
    # first when they and the 3D-from-scratch runs wait for the same cores.
    priority: 10
    threads: 2
    resources:
        gpu=config["stage1"]["gpus"],  # > 1: one DDP training over that many leased devices
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d train-slices --index {input} --fold {wildcards.fold} --settings {params.settings:q} "
        "--runtime {STAGE1_RUNTIME:q} --workers {threads} --gpus {resources.gpu} --out {params.out} > {log} 2>&1"


def embed_shards(wildcards):
    """`NAME=STORE` of every slice-store shard: `<embeddings>/NAME.zarr` holds its slices."""
    return {f"{d}-shard-{k}": rules.slice_shard.output.store.format(dataset=d, shard=k)
            for d in DATASETS for k in shard_ids(d)}


rule embed_shard:
    input:
        index=rules.index.output.slices,
        checkpoint=rules.train_slices.output.best,
    output:
        directory(f"{EMB}/{{dataset}}-shard-{{shard}}.zarr"),
    params:
        settings=embed_settings,
        store=lambda w: rules.slice_shard.output.store.format(dataset=w.dataset, shard=w.shard),
    log:
        f"{RESULTS}/logs/embed_shard/{{backbone}}-{{fold}}-{{dataset}}-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed_shard/{{backbone}}-{{fold}}-{{dataset}}-{{shard}}.tsv",
    priority: 10
    threads: 2
    resources:
        gpu=1,
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d embed --index {input.index} --checkpoint {input.checkpoint} --store {params.store} "
        "--settings {params.settings:q} --runtime {STAGE1_RUNTIME:q} --workers {threads} --out {output} > {log} 2>&1"


rule embed:
    input:
        index=rules.index.output.slices,
        shards=lambda w: [f"{EMB.format(**w)}/{name}.zarr" for name in embed_shards(w)],
    output:
        rows=f"{EMB}/rows.parquet",
        settings=f"{EMB}/settings.json",
    params:
        shards=lambda w: [f"{name}={store}" for name, store in embed_shards(w).items()],
        out=EMB,
    log:
        f"{RESULTS}/logs/embed/{{backbone}}-{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{backbone}}-{{fold}}.tsv",
    priority: 10
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d embed-gather --index {input.index} --shards {params.shards} --out {params.out} > {log} 2>&1"


rule eval_stage1:
    input:
        index=rules.index.output.slices,
        studies=rules.index.output.studies,
        embeddings=rules.embed.output.rows,
    output:
        json=f"{S1}/eval/stage1_eval.json",
        table=report(f"{S1}/eval/stage1_eval.csv", category="Stage 1", labels={"backbone": "{backbone}", "fold": "{fold}", "table": "evaluation"}),
        head=f"{S1}/eval/head/metrics.json",
        cosine=f"{S1}/eval/cosine/metrics.json",
    params:
        settings=eval_settings,
        embeddings=EMB,
        out=f"{S1}/eval",
    log:
        f"{RESULTS}/logs/eval_stage1/{{backbone}}-{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval_stage1/{{backbone}}-{{fold}}.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d eval-stage1 --index {input.index} --studies {input.studies} --embeddings {params.embeddings} "
        "--fold {wildcards.fold} --settings {params.settings:q} --out {params.out} > {log} 2>&1"


rule stage1:
    input:
        [f"{RESULTS}/stage1/{b}/fold{f}/eval/stage1_eval.json" for b, f in STAGE1_RUNS],
