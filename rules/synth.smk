# The embedded demo: a synthetic head-CT cohort written as real DICOM in the archive's layout.


rule synth_cohort:
    output:
        directory(f"{RESULTS}/synthetic/{{dataset}}"),
    params:
        layout=lambda wc: DATASETS[wc.dataset]["layout"],
        dataset=lambda wc: as_json(DATASETS[wc.dataset]["synthetic"]),
        synthetic=as_json(config["synthetic"]),
    log:
        f"{RESULTS}/logs/synth_cohort/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synth_cohort/{{dataset}}.tsv",
    threads: 2
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d synth --layout {params.layout} --dataset {params.dataset:q} "
        "--synthetic {params.synthetic:q} --workers {threads} --out {output} > {log} 2>&1"
