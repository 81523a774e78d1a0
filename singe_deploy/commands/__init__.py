"""The sub-commands besides compress (the pipeline itself): compare, flops, bench, quantize, check and report
merge. Each module has add_arguments(parser) and run(args); the pipeline's stages never import them."""
