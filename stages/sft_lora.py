"""Stage `sft_lora`: plain LoRA SFT with Bitune's adapter settings (sft.bitune.lora), the baseline of Bitune.
Enabled by eval.compare_sft_methods; reads what `sft` reads and writes DIR/sft_lora/ as `sft` writes DIR/sft/.
"""

from stages.sft import main_for_method

if __name__ == "__main__":
    main_for_method("lora")
