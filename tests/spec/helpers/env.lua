-- Loaded by busted before every spec (see tests/CMakeLists.txt): makes the
-- shared test support module findable and fails fast when run outside CTest.
assert(os.getenv("MOONTASK_BIN"), "run specs through ctest (MOONTASK_BIN is not set)")
