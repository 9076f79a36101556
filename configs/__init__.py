"""The typed config: `schema.RunConfig` (one section per component, a docstring per field) and
`loader.load_config` (presets `tiny.yaml`, `small.yaml` or a file, plus dotted overrides)."""
