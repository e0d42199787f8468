"""Names of the export formats and of the forms `swamp bench` times (torch-free, so the
command line can offer them as choices without importing torch)."""

COMPACT = "swamp"     # the compact form: values of the kept weights + the mask bits
FORMATS = (COMPACT, "dense", "torch-prune", "onnx")
SAFETENSORS = FORMATS[:3]   # the formats written as safetensors files
FORMS = ("dense", "csr", "csr+conv", "bsr", "ort")   # what `swamp bench` times
