"""The demo's own stages: `pretrain` (a generic base model, the stand-in for downloaded weights) and
`demo-data` (each domain's raw inputs, written by `domains/<name>/demo/`)."""
