"""A small knowledge corpus with known answers, for the retrieval-quality test and ``bench/rag.py``.

Four documents of a fictional company (a handbook PDF, a product DOCX, an FAQ in Markdown, a returns page in
HTML) and questions phrased the way callers ask them — deliberately not copying the documents' wording.  Each
answer is a short phrase that occurs in exactly one place of the corpus.
"""

from __future__ import annotations

HANDBOOK_PAGES = [
    # page 1
    "Welcome to Northwind Outdoor Supply. Northwind was founded in 1987 in Duluth, Minnesota, by Ingrid "
    "Halvorsen, who started by renting canoes to summer visitors. Today the company runs eleven stores "
    "across "
    "the upper Midwest and ships camping and paddling gear to all fifty states.\n\n"
    "Our customer service line is staffed from 8 a.m. to 7 p.m. Central Time, Monday through Friday, and "
    "from "
    "9 a.m. to 3 p.m. on Saturdays. The phone line is closed on Sundays. Email questions are answered within "
    "one business day.",
    # page 2
    "Store hours. All retail stores open at 10 a.m. and close at 8 p.m. from Monday to Saturday. On Sundays "
    "stores open at noon and close at 5 p.m. The flagship store on Superior Street stays open until 9 "
    "p.m. on "
    "Fridays during June, July and August.\n\n"
    "Parking. Customers of the flagship store park free of charge in the Lakeview garage for up to two "
    "hours; "
    "ask the cashier to validate your ticket.",
    # page 3
    "Membership. The Trailhead Club costs 25 dollars per year. Members earn 5 percent back in store "
    "credit on "
    "every purchase, get free standard shipping on all orders, and are invited to the annual members-only "
    "sale in October. Store credit expires 18 months after it is issued.\n\n"
    "Gift cards never expire and can be used online and in stores. Lost gift cards can be replaced only if "
    "you kept the original receipt.",
    # page 4
    "Rentals. Canoes rent for 45 dollars per day and kayaks for 35 dollars per day, paddles and life jackets "
    "included. A refundable security deposit of 200 dollars is held on a credit card for every boat rental. "
    "Rentals must be returned by 6 p.m.; late returns are charged a full extra day.\n\n"
    "Repairs. Our workshop repairs tents, sleeping bags and backpacks. Simple repairs take about one week; "
    "zipper replacements cost 30 dollars.",
]

PRODUCTS_DOCX = [
    "Product guide: the Boreal 2 tent.",
    "The Boreal 2 is a two-person, three-season backpacking tent that weighs 1.6 kilograms. It packs down to "
    "the size of a loaf of bread and pitches in about three minutes with its single color-coded pole.",
    "The rain fly has a waterproof rating of 3000 millimetres and the floor 5000 millimetres. The tent comes "
    "with a lifetime warranty against manufacturing defects; damage from wear and tear is not covered.",
    "The Glacier sleeping bag is rated to minus 12 degrees Celsius and is filled with recycled synthetic "
    "insulation, so it keeps you warm even when damp. It is machine washable on a gentle cycle.",
]

FAQ_MARKDOWN = """# Frequently asked questions

## Do you ship outside the United States?
We ship to Canada only. International orders to Canada take seven to ten business days and the customer
pays any import duties on delivery.

## How much is shipping?
Standard shipping costs 8 dollars and is free for orders over 75 dollars. Express shipping costs 20 dollars
and delivers within two business days.

## Can I change or cancel my order?
Orders can be changed or cancelled within one hour of being placed. After that the warehouse has already
started packing the parcel.

## Do you price match?
Yes. We match the price of any authorized retailer if you show us the lower price within 14 days of your
purchase.

## Which payment methods do you accept?
We accept Visa, Mastercard, American Express, PayPal and Northwind gift cards. We do not accept cheques.
"""

RETURNS_HTML = """<!DOCTYPE html><html><head><title>Returns and exchanges</title>
<script>window.analytics = "do-not-index";</script></head><body>
<h1>Returns and exchanges</h1>
<p>Unused items can be returned within 60 days of purchase for a full refund to the original payment method.
Items that have been used outdoors can be returned within 30 days for store credit only.</p>
<p>Refunds are processed within five business days after the returned item reaches our warehouse.</p>
<h2>Return shipping</h2>
<p>Returns by mail are free: print the prepaid label from your account page. Oversized items such as canoes
and kayaks must be returned to a store.</p>
<h2>Exchanges</h2>
<p>Exchanges for a different size or color are free and ship as soon as we scan your return parcel.</p>
</body></html>"""

QUESTIONS: list[tuple[str, str]] = [
    ("Who started the company and when?", "Ingrid"),
    ("What time can I reach someone on the phone during the week?", "8 a.m. to 7 p.m."),
    ("Can I call you on a Sunday?", "closed on Sundays"),
    ("When do your shops open on Sunday?", "open at noon"),
    ("Is there somewhere to leave my car near the main store?", "Lakeview garage"),
    ("How much does it cost to join the loyalty program?", "25 dollars per year"),
    ("Does my store credit run out?", "18 months"),
    ("What is the price to rent a kayak for a day?", "kayaks for 35 dollars"),
    ("Do you keep a deposit when I rent a boat?", "security deposit"),
    ("How heavy is the two person tent?", "1.6 kilograms"),
    ("Is the tent guaranteed?", "lifetime warranty"),
    ("How cold can it get in the Glacier bag?", "minus 12 degrees"),
    ("Do you deliver to Mexico or Europe?", "Canada only"),
    ("When is delivery free?", "free for orders over 75"),
    ("I ordered by mistake, can I cancel?", "within one hour"),
    ("Will you match a cheaper price from another shop?", "authorized retailer"),
    ("Can I pay by cheque?", "do not accept cheques"),
    ("How long do I have to bring back something I never used?", "60 days"),
    ("When will I get my money back after a return?", "five business days after"),
    ("Do I have to pay postage to send an item back?", "prepaid label"),
    ("How much does it cost to fix a broken zipper?", "zipper replacements"),
    ("What happens if I bring the canoe back late?", "full extra day"),
]
