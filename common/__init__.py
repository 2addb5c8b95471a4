"""Code shared by more than one stage of aidetect (training, export, gateway, serving)."""
