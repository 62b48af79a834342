# Every target creates .venv and installs requirements.txt on demand (once, then only
# when requirements.txt or pyproject.toml change).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= reports/latest
NB_TIMEOUT ?= 600
CLASSROOM ?= classroom

.PHONY: help lab test unit notebooks report workbook classroom clean

help:
	@echo "make lab     - start JupyterLab on notebooks/"
	@echo "make test    - run every test: qlib unit tests and every notebook with its student copy (nbval)"
	@echo "make notebooks - run every notebook and every student copy alone, from the top"
	@echo "make report  - evaluate the baseline and every recipe into $(OUT)/"
	@echo "make workbook - write the student copies notebooks/workbook/NN_*.ipynb"
	@echo "make classroom - write the nbgrader course $(CLASSROOM)/ (GRADE_WRITTEN=1: grade written answers)"
	@echo "make clean   - remove .venv and cached models (data/ keeps its README)"

# uv installs the same pinned wheels as pip, linked from its cache: seconds instead of the
# two minutes pip takes to unpack torch's 6 GB. INSTALLER=pip uses pip (for example with a
# wheelhouse set up in pip.conf, which uv does not read). --compile-bytecode writes the .pyc
# files at install, as pip does: uv leaves them to the first import, and where
# PYTHONDONTWRITEBYTECODE is set (as on the course's CI machine) no import ever writes them,
# so every process compiled torch, sympy, scikit-learn... anew (importing torch, dynamo,
# scikit-learn, matplotlib and pandas: 22 s against 11 s).
INSTALLER ?= uv
ifeq ($(INSTALLER),pip)
INSTALL := $(BIN)/python -m pip install
else
INSTALL := $(BIN)/uv pip install --compile-bytecode --python $(BIN)/python
endif

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(filter pip,$(INSTALLER)),,$(BIN)/python -m pip install -q uv==0.13.9)
	$(INSTALL) -r requirements.txt
	$(INSTALL) --no-deps --no-build-isolation -e .
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# make test: first `python -m qlib prepare` trains the long shared models (the course CNN,
# the LM and its students) one at a time, each on 2 threads; then every test and every
# notebook with its student copy (in one kernel: --paired-copies, notebooks/conftest.py) on
# TEST_WORKERS pytest-xdist workers, a file per worker at a time. OMP_WAIT_POLICY=PASSIVE:
# an OpenMP thread that waits sleeps instead of spinning, so two processes that each use 2
# threads on 2 cores share them (spinning, two trainings ran 10x slower); it changes no number.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m qlib prepare --no-progress
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest tests qlib notebooks --doctest-modules \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=$(NB_TIMEOUT) --durations=15 \
		--paired-copies -n $(TEST_WORKERS) --dist loadfile

unit: $(STAMP)
	$(BIN)/python -m pytest tests qlib --doctest-modules

# make notebooks: every notebook and every student copy alone, each in a fresh kernel (slower)
notebooks: $(STAMP)
	$(BIN)/python -m pytest notebooks --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=$(NB_TIMEOUT) --durations=0

report: $(STAMP)
	$(BIN)/python -m qlib report --out $(OUT)

workbook: $(STAMP)
	$(BIN)/python -m qlib workbook

classroom: $(STAMP)
	$(BIN)/python -m qlib workbook --nbgrader $(CLASSROOM) $(if $(GRADE_WRITTEN),--grade-written)

clean:
	rm -rf $(VENV) data/models reports
