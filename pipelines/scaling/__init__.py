"""The scaling stages.

Nested data subsets trained and evaluated (`sweep`), fitted scaling laws (`fit`), concept frequency
against accuracy (`concepts`) and the reports (`report`).
"""
