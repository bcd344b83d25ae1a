# rlft: `make run` trains the default demo, `make test` runs the test suite. Both create the
# environment first (.venv, torch pinned to the local CPU wheel by constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
ARGS ?=
# 2-core machines: one torch thread pool, no oversubscription from tokenizers.
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_DISABLE_TELEMETRY ?= 1

# The TPU environment (torch-xla 2.9 is built for torch 2.9 and cannot share .venv; docs/environment.md#torch-xla-in-its-own-environment).
XLA_VERSION ?= 2.9.0
XLA_VENV ?= .venv-xla
XLA_PY := $(XLA_VENV)/bin/python
XLA_STAMP := $(XLA_VENV)/.installed
TPU_NAME ?=
ZONE ?=

.PHONY: install run test test-fast lint clean install-tpu test-xla tpu-train bench pretrain-toy pretrain-toy-flow study study-geneval

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	touch $(STAMP)

run: install
	$(PY) -m rlft $(ARGS)

# Two pytest workers with one torch thread each: most tests start processes or import libraries
# (one core each), and two 2-thread workers on 2 cores would spin against each other.
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests $(ARGS)

# torch and torch-xla $(XLA_VERSION) (with libtpu) and rlft, in $(XLA_VENV); the other pins as in .venv.
install-tpu: $(XLA_STAMP)

$(XLA_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(XLA_VENV)
	sed 's/^torch==.*/torch==$(XLA_VERSION)/' constraints.txt > $(XLA_VENV)/constraints.txt
	echo "torch_xla==$(XLA_VERSION)" >> $(XLA_VENV)/constraints.txt
	$(XLA_PY) -m pip install --quiet --disable-pip-version-check -c $(XLA_VENV)/constraints.txt \
		torch==$(XLA_VERSION) "torch_xla[tpu]==$(XLA_VERSION)"
	$(XLA_PY) -m pip install --quiet --disable-pip-version-check -c $(XLA_VENV)/constraints.txt -e ".[dev]"
	touch $(XLA_STAMP)

# The XLA test set on torch-xla's CPU backend (not part of `make test`).
test-xla: install-tpu
	PJRT_DEVICE=CPU $(XLA_PY) -m pytest -q tests/xla $(ARGS)

# One run (or sweep) on every worker of a TPU VM pod, through the rlft_tpu_pod launcher.
tpu-train: install
	@test -n "$(TPU_NAME)" -a -n "$(ZONE)" || { echo 'make tpu-train: give TPU_NAME=<pod> and ZONE=<zone> (and ARGS="...")'; exit 2; }
	$(PY) -m rlft -m hardware=tpu_pod hydra.launcher.tpu_name=$(TPU_NAME) hydra.launcher.zone=$(ZONE) $(ARGS)

# Where an epoch's time goes, against the model's own compute (figures, no pass/fail): model=tiny and
# model=small (SD 1.x, DDPO) and model=tiny_sd3 (SD3's flow family, GRPO); ARGS="--models tiny_sd3" for one.
bench: install
	$(PY) -m rlft.bench $(ARGS)

# The one-GPU run, prepared (rlft/gpu_check.py): a DDPO and a TDPO-R epoch on Stable Diffusion 1.5's
# shapes (sized for 8 minutes) and a Flow-GRPO step on SD3.5 Medium's transformer (about 3 minutes), 512 px,
# bf16, LoRA, random weights built here (no download; needs a CUDA torch; never run on a GPU yet).
# ARGS="--checks sd35m" runs one of them; ARGS="--tiny" runs the same paths on the CPU on tiny shapes.
.PHONY: gpu-check
gpu-check: install
	$(PY) -m rlft.gpu_check $(ARGS)

lint: install
	$(VENV)/bin/ruff check rlft tests launchers experiments

clean:
	rm -rf $(VENV) $(XLA_VENV) outputs .pytest_cache

# The shipped toy model (rlft/toy/pipeline): the exact command that made it (conf/pretrain.yaml, seed 0).
pretrain-toy: install
	$(PY) -m rlft.pretrain hydra.run.dir=outputs/pretrain/toy $(ARGS)

# The toy flow model of the compositional world (model=toy_flow; docs/toy_world.md#the-compositional-demo).
# Two stages (conf/pretrain_flow.yaml): 10000 transformer steps from scratch, then 10000 more from there.
pretrain-toy-flow: install
	$(PY) -m rlft.pretrain --config-name pretrain_flow hydra.run.dir=outputs/pretrain/toy_flow_stage1 $(ARGS)
	$(PY) -m rlft.pretrain --config-name pretrain_flow seed=1 init_from=outputs/pretrain/toy_flow_stage1/pipeline \
		transformer.learning_rate=5e-4 hydra.run.dir=outputs/pretrain/toy_flow $(ARGS)

# The over-optimization study (README): DDPO and TDPO-R trained on colour alone, shape watched.
STUDY ?= outputs/study
study: install
	$(PY) -m rlft experiment=overopt_ddpo hydra.run.dir=$(STUDY)/ddpo $(ARGS)
	$(PY) -m rlft experiment=overopt_tdpo_r hydra.run.dir=$(STUDY)/tdpo_r $(ARGS)
	$(PY) -m rlft.plot $(STUDY)/ddpo=DDPO $(STUDY)/tdpo_r=TDPO-R --smooth 5 --out $(STUDY)/overoptimization.png \
		--metrics reward_mean eval_toy_shape_mean eval_toy_alignment_mean --title "trained on toy_color"

# The compositional study (docs/geneval_study.md): GRPO against DDPO on the toy flow model, same base and
# budget, and GRPO trained on counting alone with all six kinds measured every 10 epochs.
GENEVAL_STUDY ?= outputs/study_geneval
study-geneval: install
	$(PY) -m rlft experiment=geneval_grpo hydra.run.dir=$(GENEVAL_STUDY)/grpo $(ARGS)
	$(PY) -m rlft experiment=geneval_ddpo hydra.run.dir=$(GENEVAL_STUDY)/ddpo $(ARGS)
	$(PY) -m rlft experiment=geneval_overopt_counting hydra.run.dir=$(GENEVAL_STUDY)/counting $(ARGS)
	$(PY) -m rlft.plot $(GENEVAL_STUDY)/grpo=GRPO $(GENEVAL_STUDY)/ddpo=DDPO --out $(GENEVAL_STUDY)/grpo_vs_ddpo.png \
		--metrics reward_mean geneval_overall --title "toy_flow, reward=toy_geneval"
	$(PY) -m rlft.plot $(GENEVAL_STUDY)/counting=counting --out $(GENEVAL_STUDY)/overoptimization.png \
		--metrics geneval_counting geneval_single_object geneval_two_object geneval_colors geneval_position geneval_color_attr \
		--title "trained on counting alone"
