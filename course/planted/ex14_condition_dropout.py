from course.grading import Mistake

MISTAKES = [
    Mistake("a melody drop empties the description", "conditioners.py",
            'descriptions = ["" if n else d for d, n in zip(descriptions, null.tolist())]',
            'descriptions = ["" if n else d for d, n in zip(descriptions, drop_melody.tolist())]',
            says="loses only its melody"),
    Mistake("torch.where the wrong way round", "conditioners.py",
            "chroma = torch.where(drop_melody.to(chroma.device)[:, None, None], null_chroma, chroma)",
            "chroma = torch.where(drop_melody.to(chroma.device)[:, None, None], chroma, null_chroma)",
            says="way round"),
    Mistake("`dropped` ignored", "conditioners.py",
            "null, drop_melody = self.draw(B, generator) if dropped is None else dropped",
            "null, drop_melody = self.draw(B, generator)", says="is `dropped` used"),
    Mistake("no batch check", "conditioners.py",
            '            raise ValueError(f"{B} descriptions but chroma has batch {chroma.shape[0]}")\n',
            "            pass\n", says="should raise ValueError"),
]
