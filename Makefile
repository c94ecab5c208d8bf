# Every target depends on the venv, so a fresh clone needs no other step than the target itself.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch lies on this kind of machine's disk; a GPU host installs its own build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= build,numba,tensorrt-rtx,serve,dev

.PHONY: setup test demo
setup: $(STAMP)

# With the serve extra: the tritonserver that runtime.serve runs (nvidia-pytriton), without its
# dependencies, which pin numpy<2 (pyproject.toml, serve).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '$(TORCH_SPEC)'
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]' 'cuda-python>=13,<14'
	$(if $(findstring serve,$(EXTRAS)),$(PY) -m pip install --quiet --no-deps 'nvidia-pytriton==0.7.0')
	touch $@

test: setup
	$(PY) -m pytest -q

# The main job on the embedded default: export the shipped demo model, segment the sample image
# with onnxruntime (CPU is enough), and say where the outputs went.
DEMO_ONNX ?= build/yolact_tiny_shapes.onnx
# The export is a file target: re-running the demo reuses it until the checkpoint changes.
$(DEMO_ONNX): runtime/assets/yolact_tiny_shapes.pth | setup
	$(PY) -m export --checkpoint runtime/assets/yolact_tiny_shapes.pth --output $(DEMO_ONNX)

demo: setup $(DEMO_ONNX)
	$(PY) -m runtime.infer runtime/assets/sample.jpg --model $(DEMO_ONNX) --out out/demo --json out/demo/detections.json

# make export [CHECKPOINT=FILE] [CONFIG=NAME] [CLASS_NAMES='a,b'|FILE] [INPUT_SIZE=N] [CONFIG_FILE=FILE]
#             [EXPORT_FLAGS='--no-postprocess --cross-class --max-dets N']:
# writes build/<checkpoint name>.onnx (default: the shipped demo model) with Fast NMS and mask assembly inside.
# CLASS_NAMES, INPUT_SIZE and CONFIG_FILE describe a checkpoint trained on other data (README, "Your own model").
.PHONY: export bench
CHECKPOINT ?= runtime/assets/yolact_tiny_shapes.pth
export: setup
	$(PY) -m export --checkpoint $(CHECKPOINT) $(if $(CONFIG),--config $(CONFIG)) \
		$(if $(CLASS_NAMES),--class-names '$(CLASS_NAMES)') $(if $(INPUT_SIZE),--input-size $(INPUT_SIZE)) \
		$(if $(CONFIG_FILE),--config-file $(CONFIG_FILE)) $(EXPORT_FLAGS)

# make bench [BENCH_MODELS='yolact_resnet50 demo'] [BENCH_FLAGS='--batches 1 4 --iterations 10']: latency per
# stage for torch eager and onnxruntime at FP32/FP16/INT8 (and TensorRT where it runs), images/s and the
# network's GFLOP/s next to this machine's matmul rate. The bench times artifacts and builds none: they
# are the file targets below, built once and reused while their sources are unchanged. A model is `demo`
# (the shipped checkpoint) or a config name (a random-weight checkpoint: speed does not depend on weights);
# models go in BENCH_MODELS, not in BENCH_FLAGS, so that their artifacts are the ones built.
BENCH_MODELS ?= yolact_resnet50 demo
# Calibration images of the bench's FP16/INT8 variants: their speed does not depend on the ranges.
BENCH_CALIB_IMAGES ?= runtime/assets
# The largest batch of the TensorRT rows (runtime/bench/tensorrt.py, BATCH_SIZES).
BENCH_MAX_BATCH ?= 32
bench_checkpoint = $(if $(filter demo,$(1)),runtime/assets/yolact_tiny_shapes.pth,build/bench/$(1)_random.pth)
# NAME of build/NAME.*: the checkpoint's name up to its first dot (runtime/artifacts.py's rule).
bench_name = $(firstword $(subst ., ,$(notdir $(call bench_checkpoint,$(1)))))
BENCH_NAMES = $(foreach model,$(BENCH_MODELS),$(call bench_name,$(model)))
BENCH_ORT_ARTIFACTS = $(foreach name,$(BENCH_NAMES),build/$(name).raw.onnx build/$(name).postprocess.onnx)
BENCH_PRECISION_ARTIFACTS = $(foreach name,$(BENCH_NAMES),$(foreach suffix,raw.fp16 raw.int8 raw.int8-ort,\
  build/$(name).$(suffix).onnx))
BENCH_ENGINES = $(foreach name,$(BENCH_NAMES),build/$(name).engine build/$(name).fp16.engine build/$(name).int8.engine)
bench: setup $(BENCH_ORT_ARTIFACTS) $(BENCH_PRECISION_ARTIFACTS) $(foreach model,$(BENCH_MODELS),$(call bench_checkpoint,$(model)))
	@if $(PY) -c 'import sys; from runtime.tensorrt.backend import trt_unavailable_reason; sys.exit(trt_unavailable_reason() is not None)'; \
	then $(MAKE) --no-print-directory $(BENCH_ENGINES); \
	else echo 'no TensorRT engines built: TensorRT or a GPU is missing (the bench notes which)'; fi
	$(PY) -m runtime.bench --models $(foreach model,$(BENCH_MODELS),$(model)=$(call bench_checkpoint,$(model))) $(BENCH_FLAGS)

# The bench's artifacts. The exports and calibrated models the engines are built from are kept too
# (make would otherwise delete them as intermediate files of a chain).
.SECONDARY: $(foreach name,$(BENCH_NAMES),build/$(name).onnx build/$(name).fp16.onnx build/$(name).int8.onnx)
build/bench/%_random.pth: | setup
	$(PY) -m export.bench_artifacts checkpoint --config $* --output $@
build/%.raw.onnx: runtime/assets/%.pth | setup
	$(PY) -m export --checkpoint $< --no-postprocess --output $@
build/%.raw.onnx: build/bench/%.pth | setup
	$(PY) -m export --checkpoint $< --no-postprocess --output $@
build/%.onnx: build/bench/%.pth | setup
	$(PY) -m export --checkpoint $< --output $@
# With the checkpoint the raw export came from: YOLACT++'s post-processing re-scores with its maskiou_net.
build/%.postprocess.onnx: build/%.raw.onnx runtime/assets/%.pth
	$(PY) -m export.bench_artifacts postprocess --raw $< --checkpoint $(word 2,$^) --output $@
build/%.postprocess.onnx: build/%.raw.onnx build/bench/%.pth
	$(PY) -m export.bench_artifacts postprocess --raw $< --checkpoint $(word 2,$^) --output $@
build/%.fp16.onnx: build/%.onnx
	$(PY) -m calib --model $< --precision fp16 --images $(BENCH_CALIB_IMAGES) --output $@
build/%.int8.onnx: build/%.onnx
	$(PY) -m calib --model $< --precision int8 --images $(BENCH_CALIB_IMAGES) --output $@
build/%.int8-ort.onnx: build/%.onnx
	$(PY) -m calib --model $< --precision int8 --layout onnxruntime --images $(BENCH_CALIB_IMAGES) --output $@
build/%.fp16.engine: build/%.fp16.onnx
	$(PY) -m engines.build --model $< --precision fp16 --max-batch $(BENCH_MAX_BATCH) --output $@
build/%.int8.engine: build/%.int8.onnx
	$(PY) -m engines.build --model $< --precision int8 --max-batch $(BENCH_MAX_BATCH) --output $@
build/%.engine: build/%.onnx
	$(PY) -m engines.build --model $< --precision fp32 --max-batch $(BENCH_MAX_BATCH) --output $@

# make engine [PRECISION=fp32|fp16|int8] [MODEL=build/NAME.onnx] [MAX_BATCH=8] [MIN_IMAGE=32x32]
#             [OPT_IMAGE=1080x1920] [MAX_IMAGE=3840x3840] [ENGINE_FLAGS=--force]:
# MODEL names the fp32 export; fp16 and int8 take its calibrated sibling NAME.PRECISION.onnx
# (make calib). The image sizes (HEIGHTxWIDTH) are the engine's profile: larger images are refused,
# smaller ones enlarged on the host. Writes NAME[.PRECISION].engine and its .engine.json sidecar beside the model.
.PHONY: engine
MODEL ?= build/yolact_tiny_shapes.onnx
PRECISION ?= fp32
MAX_BATCH ?= 8
MIN_IMAGE ?= 32x32
OPT_IMAGE ?= 1080x1920
MAX_IMAGE ?= 3840x3840
ENGINE_SOURCE = $(if $(filter fp32,$(PRECISION)),$(MODEL),$(basename $(MODEL)).$(PRECISION).onnx)
engine: setup
	$(PY) -m engines.build --model $(ENGINE_SOURCE) --precision $(PRECISION) --max-batch $(MAX_BATCH) --min-image $(MIN_IMAGE) --opt-image $(OPT_IMAGE) --max-image $(MAX_IMAGE) $(ENGINE_FLAGS)

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
	$(PY) -m yolact_torch.data.shapes --out $(SHAPES_DIR) --train $(SHAPES_TRAIN) --val $(SHAPES_VAL) --seed 0

# make train-demo: trains the shipped demo model (yolact_tiny on the shapes set, from scratch) and
# writes runtime/assets/yolact_tiny_shapes.pth (weights only) and its COCO metrics on the val split.
# The hyper-parameters are the demo's (a CPU schedule of 8800 iterations, 134 minutes as run on 2
# cores), not the config's: 1900 iterations at lr 4e-3, then restarts from the previous weights for
# 900 and 6000 iterations at lr 8e-3 (each earlier schedule had decayed before the class
# confidence had converged; the demo grew in these three stages and they are kept as run).
DEMO_RUN ?= build/train-demo
.PHONY: train-demo eval
train-demo: setup $(SHAPES_DIR)/val.json
	$(PY) -m yolact_torch.train --config yolact_tiny --data $(SHAPES_DIR)/train.json --out $(DEMO_RUN)/stage1 \
	  --iters 1900 --batch-size 8 --lr 4e-3 --warmup-iters 100 --lr-steps 0.8,0.92 \
	  --no-expand --no-crop --threads 1 --save-every 100
	$(PY) -m yolact_torch.train --config yolact_tiny --data $(SHAPES_DIR)/train.json --out $(DEMO_RUN)/stage2 \
	  --init $(DEMO_RUN)/stage1/yolact_tiny_final.pth \
	  --iters 900 --batch-size 8 --lr 8e-3 --warmup-iters 50 --lr-steps 0.75,0.9 \
	  --no-expand --no-crop --threads 1 --save-every 300
	$(PY) -m yolact_torch.train --config yolact_tiny --data $(SHAPES_DIR)/train.json --out $(DEMO_RUN)/stage3 \
	  --init $(DEMO_RUN)/stage2/yolact_tiny_final.pth \
	  --iters 6000 --batch-size 8 --lr 8e-3 --warmup-iters 100 --lr-steps 0.65,0.88 \
	  --no-expand --no-crop --threads 2 --save-every 500
	cp $(DEMO_RUN)/stage3/yolact_tiny_final.pth runtime/assets/yolact_tiny_shapes.pth
	$(PY) -m yolact_torch.eval --model runtime/assets/yolact_tiny_shapes.pth --data $(SHAPES_DIR)/val.json \
	  --metrics runtime/assets/yolact_tiny_shapes.metrics.json

# make train-demo-plus: the shipped YOLACT++ demo (yolact_plus_tiny on the shapes set), fine-tuned
# from the YOLACT demo: --init-plain starts each DCN equal to the demo's plain 3x3 conv (offsets
# zero) and the offset convs and maskiou_net fresh; then 1500 iterations of 8 images at lr 4e-3
# (steps at 60% and 85%): 41 minutes as run with one thread on 2 CPU cores shared with other jobs.
# Writes runtime/assets/yolact_plus_tiny_shapes.pth (weights only) and its COCO metrics on the val split.
DEMO_PLUS_RUN ?= build/train-demo-plus
.PHONY: train-demo-plus
train-demo-plus: setup $(SHAPES_DIR)/val.json
	$(PY) -m yolact_torch.train --config yolact_plus_tiny --data $(SHAPES_DIR)/train.json --out $(DEMO_PLUS_RUN) \
	  --init-plain runtime/assets/yolact_tiny_shapes.pth \
	  --iters 1500 --batch-size 8 --lr 4e-3 --warmup-iters 100 --lr-steps 0.6,0.85 \
	  --no-expand --no-crop --threads 1 --save-every 100
	cp $(DEMO_PLUS_RUN)/yolact_plus_tiny_final.pth runtime/assets/yolact_plus_tiny_shapes.pth
	$(PY) -m yolact_torch.eval --model runtime/assets/yolact_plus_tiny_shapes.pth --data $(SHAPES_DIR)/val.json \
	  --metrics runtime/assets/yolact_plus_tiny_shapes.metrics.json

# make eval [EVAL_MODEL=any model file the runtime loads] [EVAL_DATA=COCO JSON]: box and mask AP.
EVAL_MODEL ?= runtime/assets/yolact_tiny_shapes.pth
eval: setup $(if $(filter $(SHAPES_DIR)/%,$(EVAL_DATA)),$(EVAL_DATA))
	$(PY) -m yolact_torch.eval --model $(EVAL_MODEL) --data $(EVAL_DATA)

# calib and accuracy read the shapes set when their images / evaluation data are under SHAPES_DIR.
calib: $(if $(filter $(SHAPES_DIR)/%,$(CALIB_IMAGES)),$(SHAPES_DIR)/val.json)
accuracy: $(if $(filter $(SHAPES_DIR)/%,$(EVAL_DATA)),$(SHAPES_DIR)/val.json)

# make ptx: the runtime's mask-pasting kernel as PTX for sm_80 and later GPUs, shipped as package data in
# runtime/tensorrt/ptx/, so GPU hosts paste masks on the device without triton. Run it after changing
# runtime/tensorrt/paste_kernel.py (tests/runtime/tensorrt/test_gpu_paste.py checks the shipped PTX is current).
.PHONY: ptx
ptx: setup
	$(PY) -m plugins.compile_ptx --kernel paste_masks --arch 80 --dtype fp32 fp16 --out runtime/tensorrt/ptx

# Times the yolact TensorRT plugins against the standard-op graph and torch's batched_nms (GPU hosts;
# elsewhere it says what is missing and exits 3).
.PHONY: bench-plugins
bench-plugins: setup
	$(PY) -m plugins.bench

# make bench-serve [BENCH_SERVE_FLAGS='--duration 5 --concurrency 1 4 16 --protocol grpc --score-thr 0']:
# load test of the demo model served on the bundled tritonserver (127.0.0.1): images/s, p50/p99 latency,
# errors, server memory.
.PHONY: bench-serve
bench-serve: setup $(DEMO_ONNX)
	$(PY) -m runtime.serve.bench --model $(DEMO_ONNX) $(BENCH_SERVE_FLAGS)
