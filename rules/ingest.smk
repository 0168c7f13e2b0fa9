# DICOM series -> int16 Hounsfield-unit volumes in zarr, one job per shard of studies.


rule scan:
    input:
        unpack(archive_inputs),
    output:
        files=f"{RESULTS}/{{dataset}}/scan/files.parquet",
        series=f"{RESULTS}/{{dataset}}/scan/series.parquet",
        studies=f"{RESULTS}/{{dataset}}/scan/studies.parquet",
        rejected_files=f"{RESULTS}/{{dataset}}/scan/rejected_files.csv",
        label_match=f"{RESULTS}/{{dataset}}/scan/label_match.json",
        settings=f"{RESULTS}/{{dataset}}/scan/settings.json",
    params:
        root=lambda wc: dicom_root(wc.dataset),
        labels=lambda wc: label_file(wc.dataset) or "-",  # "-": role predict, no labels
        dataset=scan_dataset,
        override=override_arg,
        shards=lambda wc: DATASETS[wc.dataset]["shards"],
        settings=section_settings("ingest", SCAN_KEYS),
        out=f"{RESULTS}/{{dataset}}/scan",
    log:
        f"{RESULTS}/logs/scan/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/scan/{{dataset}}.tsv",
    threads: 2
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d scan --root {params.root:q} --dataset {params.dataset:q} --labels {params.labels:q} "
        "{params.override} --shards {params.shards} --settings {params.settings:q} --workers {threads} "
        "--out {params.out} > {log} 2>&1"


rule ingest_shard:
    input:
        unpack(archive_inputs),
        files=rules.scan.output.files,
        series=rules.scan.output.series,
        studies=rules.scan.output.studies,
    output:
        store=directory(f"{RESULTS}/{{dataset}}/hu/shard-{{shard}}.zarr"),
        volumes=f"{RESULTS}/{{dataset}}/hu/shard-{{shard}}.volumes.parquet",
        slices=f"{RESULTS}/{{dataset}}/hu/shard-{{shard}}.slices.parquet",
        rejections=f"{RESULTS}/{{dataset}}/hu/shard-{{shard}}.rejections.csv",
    params:
        root=lambda wc: dicom_root(wc.dataset),
        scan=f"{RESULTS}/{{dataset}}/scan",
        settings=section_settings("ingest", CONVERT_KEYS),
        prefix=f"{RESULTS}/{{dataset}}/hu/shard-{{shard}}",
    log:
        f"{RESULTS}/logs/ingest_shard/{{dataset}}-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest_shard/{{dataset}}-{{shard}}.tsv"
    # One process per shard: shards run in parallel. Worker processes would pickle every volume
    # back to the shard's single writer, 2.5x slower on uncompressed 512x512 series; raise it
    # (--set-threads ingest_shard=4) for archives of JPEG 2000 or RLE files, where decoding dominates.
    threads: 1
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d ingest --root {params.root:q} --scan {params.scan} --shard {wildcards.shard} "
        "--settings {params.settings:q} --workers {threads} --out-prefix {params.prefix} > {log} 2>&1"


rule ingest_report:
    input:
        scan=rules.scan.output.studies,
        volumes=lambda wc: expand(rules.ingest_shard.output.volumes, dataset=wc.dataset, shard=shard_ids(wc.dataset)),
        slices=lambda wc: expand(rules.ingest_shard.output.slices, dataset=wc.dataset, shard=shard_ids(wc.dataset)),
        rejections=lambda wc: expand(
            rules.ingest_shard.output.rejections, dataset=wc.dataset, shard=shard_ids(wc.dataset)
        ),
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        slices=f"{RESULTS}/{{dataset}}/slices.parquet",
        rejections=report(
            f"{RESULTS}/{{dataset}}/rejections.csv", category="Ingest", labels={"dataset": "{dataset}", "table": "rejections"}
        ),
        choice=report(
            f"{RESULTS}/{{dataset}}/series_choice.csv", category="Ingest", labels={"dataset": "{dataset}", "table": "series choice"}
        ),
        outcomes=f"{RESULTS}/{{dataset}}/file_outcomes.parquet",
        summary=f"{RESULTS}/{{dataset}}/ingest_summary.json",
    params:
        scan=f"{RESULTS}/{{dataset}}/scan",
        prefixes=lambda wc: [f"{RESULTS}/{wc.dataset}/hu/shard-{k}" for k in shard_ids(wc.dataset)],
        out=f"{RESULTS}/{{dataset}}",
    log:
        f"{RESULTS}/logs/ingest_report/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest_report/{{dataset}}.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d ingest-report --scan {params.scan} --shards {params.prefixes} --out {params.out} > {log} 2>&1"


rule ingest:
    input:
        expand(rules.ingest_report.output.summary, dataset=DATASETS),
        expand(rules.ingest_report.output.rejections, dataset=DATASETS),
        expand(rules.ingest_report.output.choice, dataset=DATASETS),
