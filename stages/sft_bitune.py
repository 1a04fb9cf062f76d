"""Stage `sft_bitune`: Bitune SFT (sft.method bitune with sft.bitune), against plain LoRA SFT.
Enabled by eval.compare_sft_methods; reads what `sft` reads and writes DIR/sft_bitune/ as `sft` writes DIR/sft/.
"""

from stages.sft import main_for_method

if __name__ == "__main__":
    main_for_method("bitune")
