"""The exam's businesses, their documents and the questions (written for this exam, not taken from the demo).

Each question carries a regular expression the reply (as Whisper heard it in the caller's recording) must
match; numbers accept digits or words, since Whisper writes either.  Multi-turn items need the earlier turn
to make sense of the last one ("and how much is it?"); only the last reply is graded.  Unanswerable items
ask what the document does not say: the reply must say it does not know (never an invented fact) and should
offer a person.
"""

from __future__ import annotations

from dataclasses import dataclass

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
           10: "ten", 11: "eleven", 12: "twelve", 15: "fifteen", 18: "eighteen", 20: "twenty",
           25: "twenty[- ]five", 30: "thirty", 35: "thirty[- ]five", 45: "forty[- ]five", 60: "sixty",
           80: "eighty", 90: "ninety"}


def num(n: int) -> str:
    """A regex for ``n`` as digits or words."""
    word = NUMBERS.get(n)
    return rf"(?:(?<![\d.]){n}(?!\d){'|' + word if word else ''})"


@dataclass(frozen=True)
class Business:
    key: str
    did: str
    persona: str
    greeting: str
    document: str


@dataclass(frozen=True)
class Item:
    business: str
    turns: tuple[str, ...]
    expect: str
    """Regex (case-insensitive) the last reply must match."""
    kind: str = "single"
    """single | multi | unknown"""


BUSINESSES = (
    Business("vet", "301", "You are Sam, the friendly phone assistant of Paws and Claws Veterinary Clinic.",
             "Hello, Paws and Claws Veterinary Clinic, this is Sam. How can I help?",
             """# Paws and Claws Veterinary Clinic

We treat dogs, cats, rabbits and guinea pigs.
We do not treat horses or farm animals; we refer them to Hill Farm Vets.

## Opening hours
Monday to Friday we are open from 8 am to 7 pm.
On Saturday we are open from 9 am to 1 pm.
On Sunday we are closed; for emergencies call the city animal hospital.

## Prices
A general check-up costs 45 dollars.
A rabies vaccination costs 30 dollars.
Nail clipping costs 12 dollars.

## Address
We are at 17 Willow Lane, next to the post office. Parking is free behind the building.
"""),
    Business("bakery", "302", "You are Mia, the phone assistant of Golden Crust Bakery.",
             "Hi, Golden Crust Bakery, Mia speaking. What can I do for you?",
             """# Golden Crust Bakery

We bake bread, cakes and pastries every morning.

## Opening hours
Tuesday to Saturday we are open from 6 am to 2 pm.
On Sunday we are open from 7 am to noon.
On Monday we are closed.

## Products and prices
A sourdough loaf costs 6 dollars.
A croissant costs 3 dollars.
A birthday cake must be ordered two days ahead and costs 35 dollars.
All our bread is baked without nuts; gluten-free bread is baked on Fridays only.

## Address
We are at 5 Mill Road.
"""),
    Business("dentist", "303", "You are Leo, the phone assistant of Bright Smile Dental Practice.",
             "Good day, Bright Smile Dental Practice, Leo speaking. How can I help you?",
             """# Bright Smile Dental Practice

Dr. Maria Chen and Dr. Tom Okafor are our dentists.

## Opening hours
Monday to Thursday we are open from 8 am to 6 pm.
On Friday we are open from 8 am to 1 pm.
We are closed at the weekend.

## Treatments and prices
A check-up with cleaning costs 90 dollars.
Teeth whitening costs 250 dollars.
A filling costs from 80 dollars.
New patients should arrive 15 minutes early to fill in a form.

## Address
We are on the second floor of 88 King Street.
"""),
)

SINGLE = (
    Item("vet", ("What are your opening hours on Saturday?",), rf"{num(9)}.*(?:{num(1)}|one)"),
    Item("vet", ("How much is a check-up?",), num(45)),
    Item("vet", ("Do you treat horses?",), r"\bno\b|(?:do not|don't) treat|Hill Farm|refer"),
    Item("vet", ("Where is the clinic?",), r"Willow|wheel-?o|\b17\b|seventeen"),
    Item("bakery", ("Are you open on Monday?",), r"\bno\b|closed|(?:are|is) not open"),
    Item("bakery", ("How much is a sourdough loaf?",), num(6)),
    Item("bakery", ("How far ahead do I need to order a birthday cake?",), rf"{num(2)} days|{num(2)}"),
    Item("dentist", ("How much does teeth whitening cost?",), r"250|two hundred (?:and )?fifty"),
    Item("dentist", ("Are you open on Saturday?",), r"\bno\b|closed|(?:are|is) not open"),
    Item("dentist", ("Who are the dentists at your practice?",), r"Chen|Okafor|Maria|\bTom\b"),
)

MULTI = (
    Item("vet", ("When do you open on Saturday?", "And when do you close that day?"),
         rf"{num(1)}\b|one|1 ?pm|noon", "multi"),
    Item("vet", ("Do you treat rabbits?", "How much is a check-up for one?"), num(45), "multi"),
    Item("vet", ("How much is a rabies vaccination?", "And nail clipping?"), num(12), "multi"),
    Item("bakery", ("Do you sell croissants?", "How much does one cost?"), num(3), "multi"),
    Item("bakery", ("When is your gluten-free bread baked?", "What time do you open on that day?"),
         rf"{num(6)}|six", "multi"),
    Item("bakery", ("What time do you open on Sunday?", "And when do you close then?"), r"noon|12|twelve",
         "multi"),
    Item("dentist", ("When are you open on Friday?", "And what time do you close on that day?"),
         rf"{num(1)}|one", "multi"),
    Item("dentist", ("How much is a filling?", "And a check-up with cleaning?"), num(90), "multi"),
    Item("dentist", ("I am a new patient.", "How early should I arrive?"), rf"{num(15)}", "multi"),
    Item("bakery", ("How much is a birthday cake?", "How many days ahead must I order it?"),
         rf"{num(2)}", "multi"),
)

UNKNOWN = (
    Item("vet", ("Do you sell dog food?",), "", "unknown"),
    Item("vet", ("What is the name of your vet?",), "", "unknown"),
    Item("bakery", ("Do you deliver to my house?",), "", "unknown"),
    Item("bakery", ("How much is a baguette?",), "", "unknown"),
    Item("dentist", ("Do you do braces for children?",), "", "unknown"),
)

DONT_KNOW = r"(?:do not|don't|dont) (?:know|have)|not sure|no information|cannot|can't|unable|sorry"
OFFER = r"put you through|transfer|connect you|colleague|someone|a person"
