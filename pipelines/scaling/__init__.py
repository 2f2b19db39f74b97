"""The scaling stages: nested data subsets trained and evaluated (`sweep`), fitted scaling laws
(`fit`), concept frequency against accuracy (`concepts`) and the reports (`report`)."""
