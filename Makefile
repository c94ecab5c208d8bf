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

# The main job on the embedded default: export the shipped demo model, segment the sample image
# with onnxruntime (CPU is enough), and say where the outputs went.
DEMO_ONNX ?= build/yolact_tiny_shapes.onnx
# The export is a file target: re-running the demo reuses it until the checkpoint changes.
$(DEMO_ONNX): assets/demo/yolact_tiny_shapes.pth | setup
	$(PY) -m export --checkpoint assets/demo/yolact_tiny_shapes.pth --output $(DEMO_ONNX)

demo: setup $(DEMO_ONNX)
	$(PY) -m runtime.infer assets/sample.jpg --model $(DEMO_ONNX) --out out/demo --json out/demo/detections.json

# make export [CHECKPOINT=FILE] [CONFIG=NAME] [EXPORT_FLAGS='--no-postprocess --cross-class --max-dets N']:
# writes build/<checkpoint name>.onnx (default: the shipped demo model) with Fast NMS and mask assembly inside.
.PHONY: export bench
CHECKPOINT ?= assets/demo/yolact_tiny_shapes.pth
export: setup
	$(PY) -m export --checkpoint $(CHECKPOINT) $(if $(CONFIG),--config $(CONFIG)) $(EXPORT_FLAGS)

# make bench [BENCH_FLAGS='--models yolact_resnet50 demo --batches 1 4 --iterations 10']: latency per stage
# for torch eager and onnxruntime, images/s and the network's GFLOP/s next to this machine's matmul rate.
bench: setup
	$(PY) -m runtime.bench $(BENCH_FLAGS)

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

# make accuracy [MODEL=build/NAME.onnx] [EVAL_DATA=build/shapes/val.json]: FP16, INT8, INT8 with the
# prototype/coefficient layers kept FP32, and INT8 in onnxruntime's layout (same calibration), each
# evaluated with onnxruntime against the FP32 export.
EVAL_DATA ?= build/shapes/val.json
SENSITIVE_INT8 = $(basename $(MODEL)).int8-sensitive-fp32.onnx
accuracy: calib
	$(PY) -m calib --model $(MODEL) --precision int8 --images $(CALIB_IMAGES) --keep-sensitive --output $(SENSITIVE_INT8) $(CALIB_FLAGS)
	$(PY) -m calib --model $(MODEL) --precision int8 --layout onnxruntime --images $(CALIB_IMAGES) $(CALIB_FLAGS)
	$(PY) -m calib.report $(MODEL) $(basename $(MODEL)).fp16.onnx $(basename $(MODEL)).int8.onnx $(SENSITIVE_INT8) \
	  $(basename $(MODEL)).int8-ort.onnx --data $(EVAL_DATA)

# The synthetic shapes set (no download): build/shapes/{train,val}.json with images beside them.
SHAPES_DIR ?= build/shapes
SHAPES_TRAIN ?= 4000
SHAPES_VAL ?= 300
# calib, accuracy and eval build it on first use: say so, as it takes minutes.
$(SHAPES_DIR)/val.json: | setup
	@echo 'first building the synthetic shapes set in $(SHAPES_DIR) ($(SHAPES_TRAIN) training + $(SHAPES_VAL) validation images; once, a few minutes)'
	$(PY) -m model.data.shapes --out $(SHAPES_DIR) --train $(SHAPES_TRAIN) --val $(SHAPES_VAL) --seed 0

# make train-demo: trains the shipped demo model (yolact_tiny on the shapes set, from scratch) and
# writes assets/demo/yolact_tiny_shapes.pth (weights only) and its COCO metrics on the val split.
# The hyper-parameters are the demo's (a CPU schedule of 8800 iterations, 134 minutes as run on 2
# cores), not the config's: 1900 iterations at lr 4e-3, then restarts from the previous weights for
# 900 and 6000 iterations at lr 8e-3 (each earlier schedule had decayed before the class
# confidence had converged; the demo grew in these three stages and they are kept as run).
DEMO_RUN ?= build/train-demo
.PHONY: train-demo eval
train-demo: setup $(SHAPES_DIR)/val.json
	$(PY) -m model.train --config yolact_tiny --data $(SHAPES_DIR)/train.json --out $(DEMO_RUN)/stage1 \
	  --iters 1900 --batch-size 8 --lr 4e-3 --warmup-iters 100 --lr-steps 0.8,0.92 \
	  --no-expand --no-crop --threads 1 --save-every 100
	$(PY) -m model.train --config yolact_tiny --data $(SHAPES_DIR)/train.json --out $(DEMO_RUN)/stage2 \
	  --init $(DEMO_RUN)/stage1/yolact_tiny_final.pth \
	  --iters 900 --batch-size 8 --lr 8e-3 --warmup-iters 50 --lr-steps 0.75,0.9 \
	  --no-expand --no-crop --threads 1 --save-every 300
	$(PY) -m model.train --config yolact_tiny --data $(SHAPES_DIR)/train.json --out $(DEMO_RUN)/stage3 \
	  --init $(DEMO_RUN)/stage2/yolact_tiny_final.pth \
	  --iters 6000 --batch-size 8 --lr 8e-3 --warmup-iters 100 --lr-steps 0.65,0.88 \
	  --no-expand --no-crop --threads 2 --save-every 500
	mkdir -p assets/demo
	cp $(DEMO_RUN)/stage3/yolact_tiny_final.pth assets/demo/yolact_tiny_shapes.pth
	$(PY) -m model.eval --model assets/demo/yolact_tiny_shapes.pth --data $(SHAPES_DIR)/val.json \
	  --metrics assets/demo/yolact_tiny_shapes.metrics.json

# make eval [EVAL_MODEL=any model file the runtime loads] [EVAL_DATA=COCO JSON]: box and mask AP.
EVAL_MODEL ?= assets/demo/yolact_tiny_shapes.pth
eval: setup $(if $(filter $(SHAPES_DIR)/%,$(EVAL_DATA)),$(EVAL_DATA))
	$(PY) -m model.eval --model $(EVAL_MODEL) --data $(EVAL_DATA)

# calib and accuracy read the shapes set when their images / evaluation data are under SHAPES_DIR.
calib: $(if $(filter $(SHAPES_DIR)/%,$(CALIB_IMAGES)),$(SHAPES_DIR)/val.json)
accuracy: $(if $(filter $(SHAPES_DIR)/%,$(EVAL_DATA)),$(SHAPES_DIR)/val.json)

# Times the yolact TensorRT plugins against the standard-op graph and torch's batched_nms (GPU hosts;
# elsewhere it says what is missing and exits 3).
.PHONY: bench-plugins
bench-plugins: setup
	$(PY) -m plugins.bench
