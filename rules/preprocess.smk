# HU volumes -> resampled volumes -> cropped, windowed pseudo-RGB slice stores; splits; slice index; QC.


rule resample_shard:
    input:
        rules.ingest_shard.output.store,
    output:
        directory(f"{RESULTS}/{{dataset}}/resampled/shard-{{shard}}.zarr"),
    params:
        settings=section_settings("preprocess", ("in_plane_mm", "slice_mm", "interpolator")),
        codec=section_settings("ingest", CONVERT_KEYS),
    log:
        f"{RESULTS}/logs/resample_shard/{{dataset}}-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/resample_shard/{{dataset}}-{{shard}}.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d resample --in-store {input} --out-store {output} --settings {params.settings:q} "
        "--codec {params.codec:q} > {log} 2>&1"


rule slice_shard:
    input:
        rules.resample_shard.output,
    output:
        store=directory(f"{RESULTS}/{{dataset}}/slices/shard-{{shard}}.zarr"),
        table=f"{RESULTS}/{{dataset}}/slices/shard-{{shard}}.parquet",
        rejected=f"{RESULTS}/{{dataset}}/slices/shard-{{shard}}.rejected.csv",
    params:
        settings=section_settings("preprocess", ("crop", "threshold_hu", "opening_mm", "margin_mm", "size", "windows")),
    log:
        f"{RESULTS}/logs/slice_shard/{{dataset}}-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/slice_shard/{{dataset}}-{{shard}}.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d slices --in-store {input} --out-store {output.store} --out-index {output.table} "
        "--out-rejected {output.rejected} "
        "--settings {params.settings:q} > {log} 2>&1"


rule splits:
    input:
        expand(rules.ingest_report.output.manifest, dataset=DATASETS),
    output:
        f"{RESULTS}/splits/folds.parquet",
    params:
        manifests=per_dataset(rules.ingest_report.output.manifest),
        roles=[f"{d}={DATASETS[d]['role']}" for d in DATASETS],
        settings=as_json(config["splits"]),
    log:
        f"{RESULTS}/logs/splits/splits.log",
    benchmark:
        f"{RESULTS}/benchmarks/splits/splits.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d splits --manifests {params.manifests} --roles {params.roles} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


rule index:
    input:
        manifests=expand(rules.ingest_report.output.manifest, dataset=DATASETS),
        labels=expand(rules.ingest_report.output.slices, dataset=DATASETS),
        tables=[f"{RESULTS}/{d}/slices/shard-{k}.parquet" for d in DATASETS for k in shard_ids(d)],
        rejected=[f"{RESULTS}/{d}/slices/shard-{k}.rejected.csv" for d in DATASETS for k in shard_ids(d)],
        splits=rules.splits.output,
    output:
        slices=f"{RESULTS}/index/slices.parquet",
        studies=f"{RESULTS}/index/studies.parquet",
        rejected=report(f"{RESULTS}/index/rejected.csv", category="Preprocessing", subcategory="Rejections"),
    params:
        manifests=per_dataset(rules.ingest_report.output.manifest),
        labels=per_dataset(rules.ingest_report.output.slices),
        tables=per_shard(rules.slice_shard.output.table),
        rejected=per_shard(rules.slice_shard.output.rejected),
        roles=[f"{d}={DATASETS[d]['role']}" for d in DATASETS],
        sites=[f"{d}={site_of(d)}" for d in DATASETS],
        stroke_types=[f"{d}={DATASETS[d]['stroke_type']}" for d in DATASETS],
    log:
        f"{RESULTS}/logs/index/index.log",
    benchmark:
        f"{RESULTS}/benchmarks/index/index.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d index --manifests {params.manifests} --slice-labels {params.labels} "
        "--slice-tables {params.tables} --slice-rejections {params.rejected} --roles {params.roles} "
        "--sites {params.sites} "
        "--stroke-types {params.stroke_types} "
        "--splits {input.splits} --out-slices {output.slices} --out-studies {output.studies} "
        "--out-rejected {output.rejected} > {log} 2>&1"


rule qc:
    input:
        slices=rules.index.output.slices,
        studies=rules.index.output.studies,
    output:
        montages=report(
            directory(f"{RESULTS}/qc/montages"),
            patterns=["{name}.png"],
            category="Preprocessing",
            subcategory="Montages",
        ),
        summary_csv=report(f"{RESULTS}/qc/summary.csv", category="Preprocessing", subcategory="Dataset summary"),
        summary_png=report(f"{RESULTS}/qc/summary.png", category="Preprocessing", subcategory="Dataset summary"),
    params:
        settings=as_json(config["qc"]),
        out=f"{RESULTS}/qc",
    log:
        f"{RESULTS}/logs/qc/qc.log",
    benchmark:
        f"{RESULTS}/benchmarks/qc/qc.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d qc --slice-index {input.slices} --studies {input.studies} --settings {params.settings:q} "
        "--out {params.out} > {log} 2>&1"


rule preprocess:
    input:
        rules.index.output,
        rules.qc.output,
