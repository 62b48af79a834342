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

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# make test: each notebook and its student copy run in one kernel (--paired-copies,
# notebooks/conftest.py). One process: two pytest-xdist workers were tried and were slower,
# because two trainings that each pin 2 threads on 2 cores stall each other.
test: $(STAMP)
	$(BIN)/python -m pytest tests qlib notebooks --doctest-modules --nbval-lax \
		--nbval-current-env --nbval-cell-timeout=$(NB_TIMEOUT) --durations=15 --paired-copies

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
