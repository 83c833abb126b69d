"""The only bridge from torch to ONNX: `export.onnx_export.export_model` writes a sealed streaming graph,
`export.verify.verify_export` proves it streams like the torch model, `export.cli` is `neuralinst export`."""
