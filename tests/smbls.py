"""smbclient's `ls` output as {name: (is_dir, size)}, for every test file."""
import re

LS_LINE = re.compile(r"^  (.+?)\s+([ADHNSR]+)\s+(\d+)\s+\w{3} \w{3} +\d+ [\d:]+ \d{4}$")


def parse_ls(text):
    entries = {}
    for line in text.splitlines():
        m = LS_LINE.match(line)
        if m and m.group(1) not in (".", ".."):
            entries[m.group(1)] = ("D" in m.group(2), int(m.group(3)))
    return entries
