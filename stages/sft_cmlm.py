"""Stage `sft_cmlm`: Instruct-XLMR-style masked-LM SFT of an encoder (sft.method cmlm with sft.cmlm), against the
autoregressive SFT model in exact match and decoding speed.
Enabled by eval.compare_sft_methods; reads what `sft` reads and writes DIR/sft_cmlm/ as `sft` writes DIR/sft/.
"""

from stages.sft import main_for_method

if __name__ == "__main__":
    main_for_method("cmlm")
