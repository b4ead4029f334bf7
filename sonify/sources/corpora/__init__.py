"""Readers of the corpora's own file formats (CSV headers, quoting, ontologies), one module per corpus.

They parse and nothing else: the recipes (`sonify.sources.recipes`) and the evaluation work use them
to find files and labels. Each reader takes the official file as it is distributed.
"""
