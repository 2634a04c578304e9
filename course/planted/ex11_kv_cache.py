from course.grading import Mistake

MISTAKES = [
    Mistake("the past is not copied when growing", "transformer.py",
            "            if self.length:\n"
            "                grown_keys[:, :, :self.length] = self.key_buffer[:, :, :self.length]\n"
            "                grown_values[:, :, :self.length] = self.value_buffer[:, :, :self.length]\n",
            "", says="is the past kept"),
    Mistake("length not advanced", "transformer.py", "        self.length = end\n", "", says="advance length by S"),
    Mistake("returns the whole buffer", "transformer.py",
            "return self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]",
            "return self.key_buffer, self.value_buffer", says="not their whole capacity"),
]
