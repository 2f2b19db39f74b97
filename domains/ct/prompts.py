"""Zero-shot findings (Merlin's positive-vs-negative prompts).

For each finding, the image embedding is compared with the mean of its positive and of its negative
phrasings. Override with `ct.evaluate.prompts` in params.yaml.
"""
from __future__ import annotations

FINDING_PROMPTS: dict[str, dict[str, list[str]]] = {
    "liver_lesion": {"positive": ["there is a hypodense liver lesion", "liver lesion is present", "hepatic lesion"],
                     "negative": ["no liver lesion", "the liver is normal", "no focal hepatic lesion"]},
    "kidney_stone": {"positive": ["there is a kidney stone", "nephrolithiasis", "renal calculus is present"],
                     "negative": ["no kidney stone", "the kidneys are normal", "no nephrolithiasis"]},
    "pleural_effusion": {"positive": ["there is a pleural effusion", "pleural effusion is present", "bilateral pleural effusions"],
                         "negative": ["no pleural effusion", "the pleural spaces are clear", "no effusion"]},
    "splenomegaly": {"positive": ["the spleen is enlarged", "there is splenomegaly", "splenomegaly is present"],
                     "negative": ["the spleen is normal in size", "no splenomegaly", "the spleen is normal"]},
    "ascites": {"positive": ["there is ascites", "ascites is present", "free fluid in the abdomen"],
                "negative": ["no ascites", "no free fluid", "no abdominal fluid"]},
}
