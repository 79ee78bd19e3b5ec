"""Dataset-scale jobs on Ray Data: `clipfleet batch {embed,score,tag}` (see docs/batch.md).

inputs: find and read the input table (CSV, JSON Lines, Parquet, or a folder of images);
stages: the CPU decode task and the model actor (clipfleet's own model classes);
output: one Parquet part file per shard, written atomically, so `--resume` redoes only the
shards a killed job had not finished; job: the Ray Data pipeline that ties them together.
"""
