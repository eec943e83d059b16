"""State across records and runs: duplicate ids, incremental runs against an earlier run, carrying rows over.

`keys` hashes ids and contents and cuts hash buckets; `dedup`, `incremental` and `carry` import
it (and never each other in a circle). The typed records that cross these modules:
`keys.CurrentKeys` / `keys.PriorKeys` (key slices of this run's records / an earlier run's rows, per
bucket), `incremental.RefKeys` and `incremental.AttachedRef` (an image ref with its id's earlier
content keys), `dedup.DuplicatesEntry` (the duplicates side input per file chunk) and
`carry.CarrySlice` (earlier rows to copy, per earlier row group).
"""
