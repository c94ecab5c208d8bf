# Every target depends on the venv, so a fresh clone needs no other step than the target itself.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch lies on this kind of machine's disk; a GPU host installs its own build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= torch,onnx,quant,plugins,tensorrt-rtx,dev

.PHONY: setup test demo
setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '$(TORCH_SPEC)'
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]' 'cuda-python>=13,<14'
	touch $@

test: setup
	$(PY) -m pytest -q

# make engine [PRECISION=fp32|fp16|int8] [MODEL=build/NAME.onnx] [MAX_BATCH=8] [ENGINE_FLAGS=--force]:
# MODEL names the fp32 export; fp16 and int8 take its calibrated sibling NAME.PRECISION.onnx
# (make calib). Writes NAME[.PRECISION].engine and its .engine.json sidecar beside the model.
.PHONY: engine
MODEL ?= build/yolact_tiny_shapes.onnx
PRECISION ?= fp32
MAX_BATCH ?= 8
ENGINE_SOURCE = $(if $(filter fp32,$(PRECISION)),$(MODEL),$(basename $(MODEL)).$(PRECISION).onnx)
engine: setup
	$(PY) -m engines.build --model $(ENGINE_SOURCE) --precision $(PRECISION) --max-batch $(MAX_BATCH) $(ENGINE_FLAGS)

# make calib [PRECISION=fp16|int8] [MODEL=build/NAME.onnx] [CALIB_IMAGES=build/shapes/train.json]
#            [CALIB_FLAGS='--count 100 --method entropy --keep-sensitive']:
# writes NAME.fp16.onnx / NAME.int8.onnx beside the fp32 export; PRECISION=fp32 (the default) makes both.
# INT8 calibration ranges are cached in .calib_cache/ beside the model and reused while nothing changes.
.PHONY: calib accuracy
CALIB_IMAGES ?= build/shapes/train.json
CALIB_PRECISIONS = $(if $(filter fp32,$(PRECISION)),fp16 int8,$(PRECISION))
calib: setup
	for precision in $(CALIB_PRECISIONS); do \
	  $(PY) -m calib --model $(MODEL) --precision $$precision --images $(CALIB_IMAGES) $(CALIB_FLAGS) || exit 1; \
	done

# make accuracy [MODEL=build/NAME.onnx] [EVAL_DATA=build/shapes/val.json]: FP16, INT8, and INT8 with the
# prototype/coefficient layers kept FP32, each evaluated with onnxruntime against the FP32 export.
EVAL_DATA ?= build/shapes/val.json
SENSITIVE_INT8 = $(basename $(MODEL)).int8-sensitive-fp32.onnx
accuracy: calib
	$(PY) -m calib --model $(MODEL) --precision int8 --images $(CALIB_IMAGES) --keep-sensitive --output $(SENSITIVE_INT8) $(CALIB_FLAGS)
	$(PY) -m calib.report $(MODEL) $(basename $(MODEL)).fp16.onnx $(basename $(MODEL)).int8.onnx $(SENSITIVE_INT8) --data $(EVAL_DATA)
